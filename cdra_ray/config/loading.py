"""Build a :class:`Config` from defaults, a YAML preset and ``key=value`` overrides, and check it.

Errors name the offending key (and the file it came from), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cdra_ray.config.schema import Config

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration problem, with the key or file that caused it."""


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in ``configs/`` (``cpu_demo`` -> ``configs/cpu_demo.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise ConfigError(f"config {name_or_path!r}: no such file, and not a preset in {PRESET_DIR} (presets: {known})")


def _merge(base, other, source: str):
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: invalid key or value at {key!r}: {err.msg if hasattr(err, 'msg') else err}") from None


def load_config(preset: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- preset YAML <- overrides; returns a validated, plain (non-OmegaConf) :class:`Config`."""
    cfg = OmegaConf.structured(Config)
    if preset:
        path = resolve_preset(preset)
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors carry the line
            raise ConfigError(f"{path}: cannot parse YAML: {err}") from None
        cfg = _merge(cfg, loaded, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.total_updates=3)")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
    config: Config = OmegaConf.to_object(cfg)
    validate(config)
    return config


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "reward.dtype": (None, "float32", "bfloat16", "float16"),
    "rollout.engine": ("vllm", "hf"),
    "reward.engine": ("vllm", "hf", "openai"),
    "reward.score_mode": ("constrained", "free"),
    "reward.tts_aggregate": ("mean", "vote"),
    "reward.score_transform": ("identity", "tanh"),
    "algorithm.normalize": ("position", "pooled"),
    "algorithm.aggregation": ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean"),
    "learner.device": ("cpu", "cuda"),
    "rollout.weight_sync": ("object_store", "nccl"),
    "learner.offload_optimizer": ("none", "cpu"),
}

_POSITIVE = (
    "rollout.num_workers", "rollout.group_size", "rollout.max_new_tokens", "rollout.max_prompt_tokens",
    "rollout.max_model_len", "reward.critique_max_tokens", "learner.micro_batch_size", "learner.ppo_epochs",
    "train.total_updates", "train.groups_per_update", "rollout.tensor_parallel_size", "reward.tts_samples",
    "reward.batch_size", "reward.tensor_parallel_size",
)
_NON_NEGATIVE = (
    "rollout.temperature", "reward.critique_temperature", "algorithm.clip_eps", "algorithm.beta",
    "learner.lr", "learner.weight_decay", "train.max_staleness", "train.save_every", "rollout.num_cpus",
    "rollout.num_gpus", "reward.tts_temperature", "reward.tts_vote_decimals", "reward.num_cpus", "reward.num_gpus", "learner.num_cpus", "learner.num_gpus",
)


def _get(config: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def validate(config: Config) -> None:
    """Range and choice checks the type system cannot express; raises :class:`ConfigError` naming the key."""
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be one of {list(choices)}")
    for key in _POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be > 0")
    for key in _NON_NEGATIVE:
        if _get(config, key) < 0:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be >= 0")
    if config.reward.kv_block_size is not None and (config.reward.kv_block_size < 16 or
                                                    config.reward.kv_block_size % 16):
        raise ConfigError(f"reward.kv_block_size={config.reward.kv_block_size}: must be a multiple of 16 "
                          "(vLLM's CPU backend prefers multiples of 32)")
    if not 0.0 < config.rollout.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p={config.rollout.top_p}: must be in (0, 1]")
    if not 0.0 <= config.reward.parse_rate_floor <= 1.0:
        raise ConfigError(f"reward.parse_rate_floor={config.reward.parse_rate_floor}: must be in [0, 1]")
    if config.reward.engine == "openai" and not (config.reward.base_url and config.reward.served_model):
        raise ConfigError("reward.engine=openai needs reward.base_url and reward.served_model "
                          "(and reward.model = a local directory with the judge's tokenizer)")
    from cdra_ray.rewards.base import REWARD_MODELS
    import cdra_ray.rewards  # noqa: F401  (registers every variant)

    if config.reward.kind not in REWARD_MODELS:
        raise ConfigError(f"reward.kind={config.reward.kind!r}: must be one of {sorted(REWARD_MODELS)}")
    if config.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage={config.learner.zero_stage}: must be 0, 1, 2 or 3")
    if config.rollout.group_size < 2:
        raise ConfigError(f"rollout.group_size={config.rollout.group_size}: group-relative advantages need >= 2")
    if config.rollout.max_steps is not None and config.rollout.max_steps < 1:
        raise ConfigError(f"rollout.max_steps={config.rollout.max_steps}: must be >= 1 or null")
    if config.learner.offload_optimizer != "none" and config.learner.zero_stage == 0:
        raise ConfigError(f"learner.offload_optimizer={config.learner.offload_optimizer!r} needs "
                          "learner.zero_stage >= 1 (DeepSpeed offloads the optimizer only under ZeRO)")
    w = config.reward
    if w.engine == "vllm" and w.tensor_parallel_size > 1 and w.num_gpus != w.tensor_parallel_size:
        raise ConfigError(f"reward.tensor_parallel_size={w.tensor_parallel_size} needs reward.num_gpus="
                          f"{w.tensor_parallel_size} (one GPU per tensor-parallel worker), got {w.num_gpus}")
    if config.rollout.weight_sync == "nccl" and (config.learner.device != "cuda" or config.rollout.engine != "vllm"):
        raise ConfigError("rollout.weight_sync=nccl needs learner.device=cuda and rollout.engine=vllm (GPU only); "
                          "use object_store on CPU")
    if (config.algorithm.importance_cap is not None and config.rollout.engine == "hf"
            and (config.rollout.temperature != 1.0 or config.rollout.top_p != 1.0)):
        raise ConfigError("algorithm.importance_cap with rollout.engine=hf needs temperature 1 and top_p 1: the hf "
                          "engine reports raw log-probs, not those of the tempered distribution it sampled")
    if config.algorithm.importance_cap is not None and config.algorithm.importance_cap <= 0:
        raise ConfigError(f"algorithm.importance_cap={config.algorithm.importance_cap}: must be > 0 or null")


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_resolved(config: Config, run_dir: Path) -> Path:
    """Write the resolved config next to the run's outputs, so every run says exactly how it was made."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(to_yaml(config))
    return path
