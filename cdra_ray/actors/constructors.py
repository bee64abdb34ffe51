"""Config -> constructor arguments of each actor's plain class (engine, reward model, reference, learner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdra_ray.actors.environment import threads_for
from cdra_ray.config.schema import Config


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build a generation engine inside an actor process."""

    kind: str  # vllm | hf | openai
    model_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1

    def build(self):
        import torch

        torch.set_num_threads(self.num_threads)
        from cdra_ray.engines.factory import create_engine

        return create_engine(self.kind, self.model_dir, **self.options)


def learner_settings(config: Config, model_dir: str):
    from cdra_ray.learner.learner import LearnerSettings

    a, l = config.algorithm, config.learner
    options = {"normalize": a.normalize, "pads_count": a.pads_count} if a.advantage == "cdpa" else {}
    return LearnerSettings(
        model_dir=model_dir, dtype=config.model.dtype, zero_stage=l.zero_stage, lr=l.lr,
        weight_decay=l.weight_decay, clip_eps=a.clip_eps, beta=a.beta, aggregation=a.aggregation,
        advantage=a.advantage, advantage_options=options, advantage_eps=a.eps,
        temperature=config.rollout.temperature, micro_batch_size=l.micro_batch_size,
        ppo_epochs=l.ppo_epochs, max_grad_norm=l.max_grad_norm, importance_cap=a.importance_cap,
        gradient_checkpointing=l.gradient_checkpointing, share_prompt_forward=l.share_prompt_forward,
        num_threads=threads_for(l.num_cpus),
        seed=config.train.seed, device=l.device, dist_backend="nccl" if l.device == "cuda" else "gloo",
    )


def engine_options(kind: str, config: Config, *, kv_cache_gb: float, max_model_len: int,
                   weight_sync: str = "object_store", dtype: str | None = None,
                   block_size: int | None = None) -> dict[str, Any]:
    """Constructor options of a generation engine; ``dtype`` None = ``model.dtype``, ``block_size`` None = vLLM's."""
    dtype = dtype or config.model.dtype
    if kind == "hf":
        return {"dtype": dtype, "seed": config.train.seed, "device": config.learner.device}
    if kind == "openai":
        w = config.reward
        return {"base_url": w.base_url, "model": w.served_model, "api_key_env": w.api_key_env,
                "timeout_s": w.timeout_s, "max_retries": w.max_retries, "max_concurrency": w.max_concurrency,
                "supports_regex": w.supports_regex}
    extra = {}
    if weight_sync == "nccl":
        from cdra_ray.engines.vllm_gpu import WORKER_EXTENSION

        extra = {"weight_transfer_config": {"backend": "nccl"}, "worker_extension_cls": WORKER_EXTENSION}
    if block_size is not None:
        extra["block_size"] = block_size
    return {**extra,
        "dtype": dtype, "seed": config.train.seed, "max_model_len": max_model_len,
        "kv_cache_gb": kv_cache_gb, "gpu_memory_utilization": config.rollout.gpu_memory_utilization,
        "tensor_parallel_size": config.rollout.tensor_parallel_size,
    }


def reward_model_options(config: Config) -> dict[str, Any]:
    """The constructor options of the configured ``reward.kind``: each variant gets only what it uses."""
    w, r = config.reward, config.rollout
    judge = dict(critique_max_tokens=w.critique_max_tokens, score_mode=w.score_mode, default_score=w.default_score,
                 parse_rate_floor=w.parse_rate_floor, min_requests_for_floor=w.min_requests_for_floor,
                 cache_size=w.cache_size)
    heads = dict(dtype=w.dtype or config.model.dtype, device=config.learner.device, batch_size=w.batch_size,
                 max_length=w.max_model_len, allow_untrained_head=w.allow_untrained_head,
                 num_threads=threads_for(w.num_cpus))
    per_kind = {
        "pers_genprm": {**judge, "critique_temperature": w.critique_temperature, "max_steps": r.max_steps},
        "genrm": {**judge, "critique_temperature": w.critique_temperature},
        "rubric_rm": {**judge, "critique_temperature": w.critique_temperature},
        "tts": {**judge, "samples": w.tts_samples, "aggregate": w.tts_aggregate, "temperature": w.tts_temperature,
                "vote_decimals": w.tts_vote_decimals},
        "scalar_rm": {**heads, "score_transform": w.score_transform},
        "prm": {**heads, "max_steps": r.max_steps},
        "rule": {},  # a fixed rule over the response text with its default target (rewards/rule.py)
    }
    if w.kind not in per_kind:
        raise ValueError(f"reward.kind={w.kind!r} has no option mapping in wiring.reward_model_options; "
                         f"known: {sorted(per_kind)}")
    return per_kind[w.kind]


def rollout_worker_options(config: Config) -> dict[str, Any]:
    r = config.rollout
    return dict(group_size=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                max_prompt_tokens=r.max_prompt_tokens, max_steps=r.max_steps, seed=config.train.seed)


def rollout_engine_spec(config: Config, policy_dir: str) -> EngineSpec:
    r = config.rollout
    options = engine_options(r.engine, config, kv_cache_gb=r.kv_cache_gb, max_model_len=r.max_model_len,
                             weight_sync=r.weight_sync)
    if r.engine == "vllm":
        # behaviour log-probs of the distribution actually sampled (temperature, top-p), like the learner's
        options["logprobs_mode"] = "processed_logprobs"
    return EngineSpec(r.engine, policy_dir, options, threads_for(r.num_cpus))


def reward_engine_spec(config: Config, reward_dir: str) -> EngineSpec:
    w = config.reward
    options = engine_options(w.engine, config, kv_cache_gb=w.kv_cache_gb, max_model_len=w.max_model_len,
                             dtype=w.dtype, block_size=w.kv_block_size)
    return EngineSpec(w.engine, reward_dir, options, threads_for(w.num_cpus))


def reference_options(config: Config) -> dict[str, Any]:
    lc = config.learner
    return {"dtype": config.model.dtype, "num_threads": threads_for(lc.num_cpus),
            "temperature": config.rollout.temperature, "device": lc.device,
            "share_prompt_forward": lc.share_prompt_forward}
