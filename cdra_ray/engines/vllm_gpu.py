"""vLLM on GPU clusters: the rollout-engine side of the NCCL weight sync from the learner.

Transport. vLLM 0.32 ships the trainer -> worker weight path itself: an engine created with
``weight_transfer_config={"backend": "nccl"}`` gets ``init_weight_transfer_engine`` (each worker joins a
``StatelessProcessGroup`` + ``PyNcclCommunicator`` with the trainer), ``start_weight_update``,
``update_weights`` (receive broadcast tensors, load them through the layerwise-reload path that also handles
fused qkv / gate_up and quantized layers) and ``finish_weight_update``, all fanned out to the workers by
``collective_rpc``; the trainer side is ``NCCLTrainerWeightTransferEngine``. TRL and older OpenRLHF wrote their
own worker extension for this (``init_communicator`` / ``update_named_param``); we use vLLM's maintained one.
The learner half (ZeRO-3 gathering source, several engines at their own rank offsets in one group) lives in
:mod:`cdra_ray.learner.weight_sync_gpu`. Here, the engine half:

- :func:`build_vllm_engine_args`: the ``vllm.LLM`` arguments of a rollout engine (TP/PP, executor, dtype,
  weight transfer backend, our worker extension);
- :class:`LLMWeightSyncClient`: an in-process ``vllm.LLM`` as vLLM's ``VLLMWeightSyncClient`` protocol, for a
  rollout actor to expose its engine's control plane to the learner; its finish also resets the prefix cache
  (as :meth:`~cdra_ray.engines.vllm_engine.VLLMEngine.load_weights` does on the object-store path);
- :class:`CdraWorkerExtension` (``worker_extension_cls``): a fingerprint of each worker's weights, so a driver
  or test can check that a sync landed on every worker (and identically on all engines), and which model
  runner and attention backends vLLM chose (``launch/gpu_check.sh`` reports them);
- :func:`vllm_skips_name`: what a learner must not send. The broadcast plan itself (names, dtypes, shapes in
  order) is :func:`cdra_ray.learner.weight_sync_gpu.broadcast_plan`.

The HF -> vLLM name mapping (q/k/v -> qkv_proj, gate/up -> gate_up_proj) happens inside vLLM's
``load_weights``: learners send HF names. Nothing here needs a GPU to be tested except the transfer itself.
"""

from __future__ import annotations

from typing import Any


WORKER_EXTENSION = "cdra_ray.engines.vllm_gpu.CdraWorkerExtension"
WEIGHT_TRANSFER_BACKENDS = ("nccl", "ipc", "sparse_nccl", "sharded_rdt", "nccl_m2n")  # vLLM 0.32 built-ins
EXECUTOR_BACKENDS = ("uni", "mp", "ray", "external_launcher")

# Non-persistent buffers some checkpoints carry; vLLM recomputes them (and would reject them as unknown).
_BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def build_vllm_engine_args(
    model_dir: str,
    *,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    dtype: str = "bfloat16",
    max_model_len: int = 4096,
    seed: int = 0,
    gpu_memory_utilization: float = 0.85,
    enforce_eager: bool = False,
    enable_prefix_caching: bool = True,
    distributed_executor_backend: str | None = None,
    weight_transfer_backend: str | None = "nccl",
    worker_extension: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (= ``EngineArgs`` fields) of one rollout engine on GPUs.

    ``distributed_executor_backend`` defaults to ``"uni"`` for one GPU and ``"ray"`` for several (the engine
    then places its TP workers in the caller's Ray placement group). ``extra`` is merged last.
    """
    if tensor_parallel_size < 1 or pipeline_parallel_size < 1:
        raise ValueError(
            f"tensor_parallel_size ({tensor_parallel_size}) and pipeline_parallel_size ({pipeline_parallel_size}) "
            "must be >= 1"
        )
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if weight_transfer_backend is not None and weight_transfer_backend not in WEIGHT_TRANSFER_BACKENDS:
        raise ValueError(
            f"weight_transfer_backend {weight_transfer_backend!r} is not one of {WEIGHT_TRANSFER_BACKENDS} (or None)"
        )
    world = tensor_parallel_size * pipeline_parallel_size
    if distributed_executor_backend is None:
        distributed_executor_backend = "uni" if world == 1 else "ray"
    if distributed_executor_backend not in EXECUTOR_BACKENDS:
        raise ValueError(
            f"distributed_executor_backend {distributed_executor_backend!r} is not one of {EXECUTOR_BACKENDS}"
        )
    if distributed_executor_backend == "uni" and world > 1:
        raise ValueError(f"distributed_executor_backend='uni' runs one worker but TP x PP = {world}")
    args: dict[str, Any] = {
        "model": str(model_dir),
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "enable_prefix_caching": enable_prefix_caching,
        "distributed_executor_backend": distributed_executor_backend,
    }
    if worker_extension:
        args["worker_extension_cls"] = WORKER_EXTENSION
    if weight_transfer_backend is not None:
        args["weight_transfer_config"] = {"backend": weight_transfer_backend}
    args.update(extra or {})
    return args


def vllm_skips_name(name: str, tie_word_embeddings: bool) -> bool:
    """Tensors a learner has but must not send: a tied ``lm_head`` (vLLM shares the embedding) and buffers."""
    if tie_word_embeddings and name == "lm_head.weight":
        return True
    return name.endswith(_BUFFER_SUFFIXES)


class LLMWeightSyncClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over an in-process ``vllm.LLM`` (its methods take request dicts)."""

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        """Finish, then drop the prefix cache: its KV blocks were computed with the old weights, and vLLM's
        weight transfer leaves them in place, so a repeated prompt would reuse stale KV (silently wrong)."""
        self.llm.finish_weight_update(weight_version)
        if self.llm.reset_prefix_cache() is False:  # only fails while requests hold KV blocks
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update (requests were "
                               "running); the caller must stop generation before updating weights")

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()


class CdraWorkerExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``); call with ``llm.collective_rpc("cdra_...")``.

    Methods return plain floats (cheap to ship back from each worker); ``self`` is the vLLM worker.
    """

    def cdra_weight_fingerprint(self) -> dict[str, float]:
        """Sum of every parameter in float64, keyed by vLLM's (fused, per-rank shard) parameter names."""
        model = self.model_runner.get_model()
        return {name: float(param.detach().double().sum()) for name, param in model.named_parameters()}

    def cdra_weight_checksum(self) -> float:
        """One number per worker: equal on every engine after a sync when TP layouts match."""
        return float(sum(self.cdra_weight_fingerprint().values()))

    def cdra_runner_info(self) -> dict[str, object]:
        """Which model runner (vLLM's V1 ``GPUModelRunner`` or the V2 one) and attention backends vLLM chose."""
        runner = self.model_runner
        groups = getattr(runner, "attn_groups", None) or []
        backends = sorted({group.backend.get_name() for per_cache in groups for group in per_cache})
        return {"model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}",
                "attention_backends": backends, "device": str(getattr(self, "device", "?"))}
