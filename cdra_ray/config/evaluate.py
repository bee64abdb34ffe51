"""``evaluate:`` section of the config: what ``cdra-ray evaluate`` generates, which judge grades it, the report.

Torch-free. :func:`check_eval_config` raises :class:`~cdra_ray.config.ConfigError` naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

METHOD_KINDS = ("zero_shot", "few_shot", "cot", "policy")  # prompting baselines (App. C) | a trained policy
JUDGE_ENGINES = ("vllm", "hf", "openai")
POLICY_ENGINES = ("vllm", "hf")


@dataclass
class EvalMethod:
    name: str = "zero_shot"  # the row label in table.md
    kind: str = "zero_shot"  # zero_shot | few_shot | cot | policy (the step-by-step inference format)
    model: Optional[str] = None  # HF dir, training run dir (its latest checkpoint), alias; None = model.policy


def _default_methods() -> list:
    return [EvalMethod("zero_shot", "zero_shot"), EvalMethod("few_shot", "few_shot"), EvalMethod("cot", "cot")]


@dataclass
class JudgeConfig:
    model: Optional[str] = None  # judge model dir / alias (openai: a local dir with its tokenizer); None = no judge
    engine: str = "vllm"  # vllm | hf | openai (any OpenAI-compatible endpoint)
    dtype: str = "bfloat16"
    base_url: Optional[str] = None  # openai: e.g. http://judge-host:8000/v1
    served_model: Optional[str] = None  # openai: the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 3
    max_concurrency: int = 8
    constrained: bool = True  # the Yes/No is forced by a regex after the free explanation (needs regex support)
    max_new_tokens: int = 96  # budget of the explanation (or the quoted preference)
    batch_size: int = 64  # judge requests per engine call (progress and on-disk appends per batch)
    agreement_samples: int = 16  # judgments re-asked to measure the judge's self-agreement; 0 = off
    agreement_temperature: float = 0.0
    kv_cache_gb: float = 1.0
    max_model_len: int = 4096
    num_threads: Optional[int] = None  # hf engine: torch threads


@dataclass
class EvalConfig:
    output_dir: Optional[str] = None  # None = <run.output_dir>/<run.name>/evaluate
    data: Optional[str] = None  # scenarios to evaluate (JSONL / builtin:NAME); None = data.path
    max_scenarios: Optional[int] = None
    methods: List[EvalMethod] = field(default_factory=_default_methods)
    demo_data: str = "builtin:eval_demos"  # few-shot demonstrations {id, preference, query, response}; never the
    few_shot_k: int = 2  # evaluated scenarios (checked by id and by text)
    demo_seed: int = 0
    engine: str = "vllm"  # policy generation: vllm | hf
    dtype: str = "float32"
    max_new_tokens: int = 256
    temperature: float = 0.0  # greedy decoding of the evaluated policies
    max_prompt_tokens: int = 1536
    max_model_len: int = 2048
    kv_cache_gb: float = 1.0
    generation_batch_size: int = 32
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    training_runs: List[str] = field(default_factory=list)  # run dirs whose metrics.jsonl go into curves.png
    progress_bar: bool = True


def policy_engine_options(cfg: EvalConfig) -> dict:
    """Keywords of the policy engine (``create_engine(cfg.engine, model_dir, **options)``)."""
    options = {"dtype": cfg.dtype}
    if cfg.engine == "vllm":
        options.update(max_model_len=cfg.max_model_len, kv_cache_gb=cfg.kv_cache_gb, seed=cfg.seed)
    return options


def judge_engine_options(cfg: EvalConfig) -> dict:
    """Keywords of the judge engine (``create_engine(cfg.judge.engine, judge_dir, **options)``)."""
    j = cfg.judge
    if j.engine == "openai":
        return {"base_url": j.base_url, "model": j.served_model, "api_key_env": j.api_key_env,
                "timeout_s": j.timeout_s, "max_retries": j.max_retries, "max_concurrency": j.max_concurrency,
                "supports_regex": j.constrained}
    if j.engine == "vllm":
        return {"dtype": j.dtype, "max_model_len": j.max_model_len, "kv_cache_gb": j.kv_cache_gb, "seed": cfg.seed}
    return {"dtype": j.dtype, "num_threads": j.num_threads}


def check_eval_config(cfg: EvalConfig) -> None:
    """Range and choice checks on ``evaluate.*``; raises ConfigError naming the key."""
    from cdra_ray.config.loading import ConfigError

    if not cfg.methods:
        raise ConfigError("evaluate.methods: empty; list at least one method")
    names = [m.name for m in cfg.methods]
    for i, m in enumerate(cfg.methods):
        if m.kind not in METHOD_KINDS:
            raise ConfigError(f"evaluate.methods[{i}].kind={m.kind!r}: must be one of {list(METHOD_KINDS)}")
        if not m.name or m.name in names[:i]:
            raise ConfigError(f"evaluate.methods[{i}].name={m.name!r}: names must be non-empty and unique")
    if cfg.engine not in POLICY_ENGINES:
        raise ConfigError(f"evaluate.engine={cfg.engine!r}: must be one of {list(POLICY_ENGINES)}")
    if cfg.judge.engine not in JUDGE_ENGINES:
        raise ConfigError(f"evaluate.judge.engine={cfg.judge.engine!r}: must be one of {list(JUDGE_ENGINES)}")
    if cfg.judge.engine == "openai" and not (cfg.judge.base_url and cfg.judge.served_model):
        raise ConfigError("evaluate.judge.engine=openai needs evaluate.judge.base_url and evaluate.judge.served_model "
                          "(and evaluate.judge.model = a local directory with the judge's tokenizer)")
    for key, value in (("evaluate.few_shot_k", cfg.few_shot_k), ("evaluate.max_new_tokens", cfg.max_new_tokens),
                       ("evaluate.generation_batch_size", cfg.generation_batch_size),
                       ("evaluate.judge.max_new_tokens", cfg.judge.max_new_tokens),
                       ("evaluate.judge.batch_size", cfg.judge.batch_size),
                       ("evaluate.bootstrap_samples", cfg.bootstrap_samples)):
        if value < 1:
            raise ConfigError(f"{key}={value}: must be >= 1")
    for key, value in (("evaluate.temperature", cfg.temperature),
                       ("evaluate.judge.agreement_samples", cfg.judge.agreement_samples),
                       ("evaluate.judge.agreement_temperature", cfg.judge.agreement_temperature)):
        if value < 0:
            raise ConfigError(f"{key}={value}: must be >= 0")
    if not 0.5 <= cfg.confidence < 1.0:
        raise ConfigError(f"evaluate.confidence={cfg.confidence}: must be in [0.5, 1)")
    if cfg.max_scenarios is not None and cfg.max_scenarios < 1:
        raise ConfigError(f"evaluate.max_scenarios={cfg.max_scenarios}: must be >= 1 or null")
    from cdra_ray.engines.catalog import ENGINES  # the engines' own option checks, before any model loads
    from cdra_ray.registry import RegistryError

    for section, kind, options in (("evaluate", cfg.engine, policy_engine_options(cfg)),
                                   ("evaluate.judge", cfg.judge.engine, judge_engine_options(cfg))):
        try:
            ENGINES.options(kind, options, key=section)
        except RegistryError as err:
            raise ConfigError(str(err)) from None
