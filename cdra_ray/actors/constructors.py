"""Config -> constructor arguments of each actor's plain class (engine, reward model, reference, learner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdra_ray.actors.environment import threads_for
from cdra_ray.config import resolve
from cdra_ray.config.schema import Config
from cdra_ray.registry import options_dict


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build a generation engine inside an actor process."""

    kind: str  # a name in cdra_ray.engines.catalog.ENGINES
    model_dir: str
    options: Any = None  # the kind's options object (None = its defaults)
    num_threads: int = 1

    def build(self, num_threads: int | None = None):
        """The engine, with ``num_threads`` torch threads (None: the config's ``num_threads``; actors pass the
        count from the CPUs Ray granted them)."""
        import torch

        torch.set_num_threads(num_threads or self.num_threads)
        from cdra_ray.engines.factory import create_engine

        return create_engine(self.kind, self.model_dir, self.options)


def learner_settings(config: Config, model_dir: str):
    from cdra_ray.learner.learner import LearnerSettings

    a, l = config.algorithm, config.learner
    _, advantage_options = resolve.advantage(config)
    return LearnerSettings(
        model_dir=model_dir, dtype=config.model.dtype, zero_stage=l.zero_stage, lr=l.lr,
        weight_decay=l.weight_decay, clip_eps=a.clip_eps, beta=a.beta, aggregation=a.aggregation,
        advantage=a.advantage, advantage_options=options_dict(advantage_options), advantage_eps=a.eps,
        temperature=config.rollout.temperature, micro_batch_size=l.micro_batch_size,
        ppo_epochs=l.ppo_epochs, max_grad_norm=l.max_grad_norm, importance_cap=a.importance_cap,
        gradient_checkpointing=l.gradient_checkpointing, share_prompt_forward=l.share_prompt_forward,
        num_threads=threads_for(l.num_cpus),
        seed=config.train.seed, device=l.device, dist_backend="nccl" if l.device == "cuda" else "gloo",
        offload_optimizer=l.offload_optimizer,
    )


def engine_options(kind: str, config: Config, *, kv_cache_gb: float, max_model_len: int,
                   weight_sync: str = "object_store", dtype: str | None = None, block_size: int | None = None,
                   logprobs_mode: str | None = None, tensor_parallel_size: int = 1, enforce_eager: bool = True,
                   speculative_tokens: int = 0):
    """The options object of engine ``kind``; ``dtype`` None = ``model.dtype``, ``block_size`` None = vLLM's.
    ``tensor_parallel_size`` is the role's own (``rollout.`` or ``reward.tensor_parallel_size``)."""
    from cdra_ray.engines.catalog import HFOptions, OpenAIOptions, VLLMOptions

    dtype = dtype or config.model.dtype
    if kind == "hf":
        return HFOptions(dtype=dtype, seed=config.train.seed, device=config.learner.device)
    if kind == "openai":
        w = config.reward
        return OpenAIOptions(base_url=w.base_url, model=w.served_model, api_key_env=w.api_key_env,
                             timeout_s=w.timeout_s, max_retries=w.max_retries, max_concurrency=w.max_concurrency,
                             supports_regex=w.supports_regex)
    nccl = {}
    if weight_sync == "nccl":
        from cdra_ray.engines.vllm_gpu import WORKER_EXTENSION

        nccl = {"weight_transfer_config": {"backend": "nccl"}, "worker_extension_cls": WORKER_EXTENSION}
    return VLLMOptions(
        **nccl, dtype=dtype, seed=config.train.seed, max_model_len=max_model_len, kv_cache_gb=kv_cache_gb,
        gpu_memory_utilization=config.rollout.gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size, block_size=block_size,
        logprobs_mode=logprobs_mode, enforce_eager=enforce_eager, speculative_tokens=speculative_tokens,
    )


def reward_model(config: Config):
    """``(entry, options)`` of ``reward.kind``: the actor calls ``entry.create(options, engine= | model_dir=)``."""
    return resolve.reward(config)


def reward_model_options(config: Config) -> dict[str, Any]:
    """The checked options of ``reward.kind`` as constructor keywords (for ``create_reward_model``)."""
    return options_dict(resolve.reward(config)[1])


def rollout_worker_options(config: Config) -> dict[str, Any]:
    r = config.rollout
    return dict(group_size=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                max_prompt_tokens=r.max_prompt_tokens, max_steps=r.max_steps, seed=config.train.seed)


def rollout_engine_spec(config: Config, policy_dir: str) -> EngineSpec:
    r = config.rollout
    # vllm: behaviour log-probs of the distribution actually sampled (temperature, top-p), like the learner's
    options = engine_options(r.engine, config, kv_cache_gb=r.kv_cache_gb, max_model_len=r.max_model_len,
                             weight_sync=r.weight_sync, tensor_parallel_size=r.tensor_parallel_size, dtype=r.dtype,
                             logprobs_mode="processed_logprobs" if r.engine == "vllm" else None,
                             enforce_eager=r.enforce_eager)
    return EngineSpec(r.engine, policy_dir, options, threads_for(r.num_cpus))


def reward_engine_spec(config: Config, reward_dir: str) -> EngineSpec:
    w = config.reward
    options = engine_options(w.engine, config, kv_cache_gb=w.kv_cache_gb, max_model_len=w.max_model_len,
                             dtype=w.dtype, block_size=w.kv_block_size, tensor_parallel_size=w.tensor_parallel_size,
                             enforce_eager=w.enforce_eager, speculative_tokens=w.speculative_tokens)
    return EngineSpec(w.engine, reward_dir, options, threads_for(w.num_cpus))


def reference_options(config: Config) -> dict[str, Any]:
    lc = config.learner
    return {"dtype": config.model.dtype, "num_threads": threads_for(lc.num_cpus),
            "temperature": config.rollout.temperature, "device": lc.device,
            "share_prompt_forward": lc.share_prompt_forward}
