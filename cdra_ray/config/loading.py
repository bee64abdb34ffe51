"""Build a :class:`Config` from defaults, a YAML preset and ``key=value`` overrides, and check it.

Errors name the offending key (and the file it came from), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cdra_ray.config import resolve
from cdra_ray.config.schema import Config
from cdra_ray.registry import RegistryError

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


def _merge(base, other, source: str, dotted: str | None = None):
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or dotted or _failing_key(base, other) or "?"
        msg = getattr(err, "msg", None) or str(err)
        raise ConfigError(f"{source}: invalid key or value at {key!r}: {msg.splitlines()[0]}") from None
    except TypeError as err:  # OmegaConf: a list given where the schema has a mapping (or the reverse)
        key = dotted or _failing_key(base, other) or "?"
        raise ConfigError(f"{source}: invalid value at {key!r}: {err} (a mapping is expected as "
                          f"{{name: value}}, a list as [a, b])") from None


def _failing_key(base, other) -> str | None:
    """The top-level key of ``other`` whose merge fails (OmegaConf names none when a whole section is wrong)."""
    if not isinstance(other, DictConfig):
        return None
    for key in other:
        try:
            OmegaConf.merge(base, {key: other[key]})
        except (OmegaConfBaseException, TypeError):
            return str(key)
    return None


def _load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors carry the line
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, rollout:, ...), "
                          f"got a {type(loaded).__name__.replace('Config', '').lower()}")
    return loaded


def load_config(preset: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- preset YAML <- overrides; returns a validated, plain (non-OmegaConf) :class:`Config`."""
    cfg = OmegaConf.structured(Config)
    sources = []
    if preset:
        path = resolve_preset(preset)
        cfg = _merge(cfg, _load_yaml(path), str(path))
        sources.append(str(path))
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.total_updates=3)")
        try:
            other = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: cannot read it: {err}") from None
        cfg = _merge(cfg, other, f"override {item!r}", key.strip())
        sources.append(f"override {item!r}")
    try:
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # e.g. a ${...} interpolation that does not resolve
        key = getattr(err, "full_key", None) or "?"
        msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
        where = ", ".join(sources) or "defaults"
        raise ConfigError(f"{key}: cannot resolve its value ({msg}); from {where}") from None
    try:
        validate(config)
    except ConfigError as err:
        if preset:
            raise ConfigError(f"{err} (config {resolve_preset(preset)})") from None
        raise
    return config


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16", "auto"),
    "reward.dtype": (None, "float32", "bfloat16", "float16", "auto"),
    "rollout.dtype": (None, "float32", "bfloat16", "float16", "auto"),
    "learner.device": ("cpu", "cuda"),
    "rollout.weight_sync": ("object_store", "nccl"),
    "learner.offload_optimizer": ("none", "cpu"),
    "learner.placement_strategy": ("STRICT_PACK", "PACK"),
    "run.log_level": ("debug", "info", "warning", "error"),
}

_POSITIVE = (
    "rollout.num_workers", "rollout.group_size", "rollout.max_new_tokens", "rollout.max_prompt_tokens",
    "rollout.max_model_len", "learner.micro_batch_size", "learner.ppo_epochs", "train.total_updates",
    "train.groups_per_update", "rollout.tensor_parallel_size", "reward.max_model_len", "rollout.kv_cache_gb",
    "reward.kv_cache_gb", "reward.tensor_parallel_size", "reward.num_replicas",
)
_NON_NEGATIVE = (
    "reward.speculative_tokens",
    "algorithm.eps", "algorithm.beta", "learner.lr", "learner.weight_decay", "learner.max_grad_norm",
    "train.max_staleness", "train.save_every", "train.save_every_minutes", "train.keep_checkpoints",
    "run.max_actor_restarts", "rollout.num_cpus", "rollout.num_gpus", "reward.num_cpus", "reward.num_gpus", "learner.num_cpus",
    "learner.num_gpus", "reward.timeout_s", "reward.max_retries", "reward.max_concurrency",
)


def _get(config: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def _non_finite(node, prefix: str = ""):
    """Dotted keys of every NaN or infinite float in the config (sections, lists and dicts included)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _non_finite(getattr(node, f.name), f"{prefix}{f.name}")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, f"{prefix}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _non_finite(v, f"{prefix}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        yield prefix, node


# Ray's built-in resources have keywords of their own (num_cpus, num_gpus, memory): refused as custom resources
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
RESOURCE_KEYS = ("rollout.resources", "reward.resources", "learner.resources")


def check_resources(config: Config) -> None:
    """Custom Ray resources per role (placement by node type, never by host name): names and amounts."""
    for key in RESOURCE_KEYS:
        for name, amount in _get(config, key).items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{key}: resource name {name!r} must be a non-empty string")
            if name in RESERVED_RESOURCES:
                role = key.split(".")[0]
                raise ConfigError(f"{key}.{name}: Ray's built-in resource; set {role}.num_cpus / {role}.num_gpus "
                                  f"instead (custom resources are the names you gave nodes with "
                                  f"`ray start --resources`)")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
                raise ConfigError(f"{key}.{name}={amount!r}: must be a number > 0 (how much of that resource one "
                                  f"actor of the role takes)")


def validate(config: Config) -> None:
    """Range and choice checks the type system cannot express; raises :class:`ConfigError` naming the key.

    Named kinds (``algorithm.advantage``, ``algorithm.aggregation``, ``reward.kind``, ``rollout.engine``,
    ``reward.engine``) and their options are checked through their registries (:mod:`cdra_ray.config.resolve`),
    which list the valid choices."""
    for section in dataclasses.fields(config):
        for key, value in _non_finite(getattr(config, section.name), f"{section.name}."):
            raise ConfigError(f"{key}={value}: must be a finite number")
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be one of {list(choices)}")
    for key in _POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be > 0")
    for key in _NON_NEGATIVE:
        if _get(config, key) < 0:
            raise ConfigError(f"{key}={_get(config, key)!r}: must be >= 0")
    check_resources(config)
    a, r, w = config.algorithm, config.rollout, config.reward
    if not 0.0 < a.clip_eps < 1.0:
        raise ConfigError(f"algorithm.clip_eps={a.clip_eps}: must be in (0, 1)")
    if config.data.max_scenarios is not None and config.data.max_scenarios < 1:
        raise ConfigError(f"data.max_scenarios={config.data.max_scenarios}: must be >= 1 or null (all)")
    if w.kv_block_size is not None and (w.kv_block_size < 16 or w.kv_block_size % 16):
        raise ConfigError(f"reward.kv_block_size={w.kv_block_size}: must be a multiple of 16 "
                          "(vLLM's CPU backend prefers multiples of 32)")
    if not 0.0 < r.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p={r.top_p}: must be in (0, 1]")
    if not 0.0 < r.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"rollout.gpu_memory_utilization={r.gpu_memory_utilization}: must be in (0, 1]")
    if w.speculative_tokens and w.engine != "vllm":
        raise ConfigError(f"reward.speculative_tokens={w.speculative_tokens}: only reward.engine=vllm drafts tokens "
                          f"(reward.engine={w.engine!r}); set it to 0")
    if w.engine == "openai" and not (w.base_url and w.served_model):
        raise ConfigError("reward.engine=openai needs reward.base_url and reward.served_model "
                          "(and reward.model = a local directory with the judge's tokenizer)")
    if r.temperature <= 0:
        raise ConfigError(f"rollout.temperature={r.temperature}: must be > 0 (the rollout samples "
                          f"{r.group_size} different responses per prompt; 0 would make them identical)")
    try:
        for section in ("rollout", "reward"):
            resolve.engine(config, section)
        resolve.aggregation(config)
        resolve.advantage(config)
        resolve.reward(config)
        resolve.check_every_kind(config)  # a bad value of a key the chosen kind does not read is still an error
    except RegistryError as err:
        raise ConfigError(str(err)) from None
    if r.engine == "openai":
        raise ConfigError("rollout.engine=openai: the policy needs a local engine (vllm or hf); openai is for "
                          "reward.engine only")
    if config.learner.num_ranks < 1:
        raise ConfigError(f"learner.num_ranks={config.learner.num_ranks}: must be >= 1 (data-parallel learner ranks)")
    if config.learner.reference_num_ranks < 1:
        raise ConfigError(f"learner.reference_num_ranks={config.learner.reference_num_ranks}: must be >= 1 "
                          "(1 = one reference actor with the whole model, N = a ZeRO-3 partition on each of N ranks)")
    if config.learner.reference_num_gpus is not None and config.learner.reference_num_gpus < 0:
        raise ConfigError(f"learner.reference_num_gpus={config.learner.reference_num_gpus}: must be >= 0 or null")
    if config.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage={config.learner.zero_stage}: must be 0, 1, 2 or 3")
    if r.group_size < 2:
        raise ConfigError(f"rollout.group_size={r.group_size}: group-relative advantages need >= 2")
    if r.max_steps is not None and r.max_steps < 1:
        raise ConfigError(f"rollout.max_steps={r.max_steps}: must be >= 1 or null")
    if config.learner.offload_optimizer != "none" and config.learner.zero_stage == 0:
        raise ConfigError(f"learner.offload_optimizer={config.learner.offload_optimizer!r} needs "
                          "learner.zero_stage >= 1 (DeepSpeed offloads the optimizer only under ZeRO)")
    if w.engine == "vllm" and w.tensor_parallel_size > 1 and w.num_gpus != w.tensor_parallel_size:
        raise ConfigError(f"reward.tensor_parallel_size={w.tensor_parallel_size} needs reward.num_gpus="
                          f"{w.tensor_parallel_size} (one GPU per tensor-parallel worker), got {w.num_gpus}")
    if r.weight_sync == "nccl" and (config.learner.device != "cuda" or r.engine != "vllm"):
        raise ConfigError("rollout.weight_sync=nccl needs learner.device=cuda and rollout.engine=vllm (GPU only); "
                          "use object_store on CPU")
    if a.importance_cap is not None and r.engine == "hf" and (r.temperature != 1.0 or r.top_p != 1.0):
        raise ConfigError("algorithm.importance_cap with rollout.engine=hf needs temperature 1 and top_p 1: the hf "
                          "engine reports raw log-probs, not those of the tempered distribution it sampled")
    if a.importance_cap is not None and a.importance_cap <= 0:
        raise ConfigError(f"algorithm.importance_cap={a.importance_cap}: must be > 0 or null")
    # The stage sections check themselves (each module owns its keys).
    from cdra_ray.config.construct import validate_construct
    from cdra_ray.config.evaluate import check_eval_config
    from cdra_ray.config.recipe import check_recipe_config
    from cdra_ray.config.serve import validate_serve

    validate_construct(config.construct)
    check_eval_config(config.evaluate)
    check_recipe_config(config.recipe)
    validate_serve(config.serve)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_resolved(config: Config, run_dir: Path) -> Path:
    """Write the resolved config next to the run's outputs, so every run says exactly how it was made."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(to_yaml(config))
    return path
