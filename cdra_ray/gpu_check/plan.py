"""The check plan, the timeout runner, the pass/fail table and exit codes of the GPU check (no GPU needed).

Each check runs in a fresh spawned process in its own session: vLLM allows one engine per process, DeepSpeed
one process group, and a process stuck in NCCL can only be killed, with every child it started (vLLM's engine
core, Ray). A check returns ``{row: (passed, detail)}``; rows it was expected to report but did not are failures.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, TIMEOUT, SKIP = "pass", "FAIL", "TIMEOUT", "skip"
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3
CLEANUP: list = []  # callables a check registers; run in its process after the results were sent


@dataclass(frozen=True)
class Check:
    name: str
    target: str  # "module:function", called with (workdir, **kwargs) in the child process
    rows: tuple[str, ...]  # what it reports
    min_gpus: int
    timeout_s: float
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    name: str
    status: str  # PASS | FAIL | TIMEOUT | SKIP
    seconds: float
    detail: str


CHECKS_MODULE = "cdra_ray.gpu_check.checks"
CHECKS = (
    Check("vllm_engine", f"{CHECKS_MODULE}:check_vllm_engine",
          ("vllm: model runner", "vllm: generate + log-probs", "vllm: object-store reload"), 1, 300),
    Check("learner_zero3", f"{CHECKS_MODULE}:check_learner_step",
          ("learner: ZeRO-3 bf16 step", "learner: peak memory -> Qwen2.5-7B"), 1, 240, {"offload": False}),
    Check("learner_offload", f"{CHECKS_MODULE}:check_learner_step",
          ("learner: ZeRO-3 bf16 + CPU optimizer offload step", "learner: peak memory -> Qwen2.5-7B (offload)"),
          1, 240, {"offload": True}),
    Check("tiny_preset", f"{CHECKS_MODULE}:check_tiny_preset",
          ("tiny preset on CUDA (object store)",), 1, 420, {"weight_sync": "object_store"}),
    Check("nccl_sync", f"{CHECKS_MODULE}:check_nccl_sync",
          ("nccl: sync 1", "nccl: sync 2", "nccl: failure mid-broadcast -> error"), 2, 420),
    Check("tiny_preset_nccl", f"{CHECKS_MODULE}:check_tiny_preset",
          ("tiny preset on CUDA (NCCL sync)",), 4, 420, {"weight_sync": "nccl"}),
)


def check_plan(num_gpus: int, only: list[str] | None = None) -> list[tuple[Check, str | None]]:
    """Every check with the reason it is skipped (None = it runs) on a machine with ``num_gpus`` GPUs."""
    unknown = sorted(set(only or []) - {c.name for c in CHECKS})
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {[c.name for c in CHECKS]}")
    plan = []
    for check in CHECKS:
        if only and check.name not in only:
            reason = "not selected"
        elif num_gpus == 0:
            reason = "no CUDA device"
        elif num_gpus < check.min_gpus:
            reason = f"needs {check.min_gpus} GPUs, found {num_gpus}"
        else:
            reason = None
        plan.append((check, reason))
    return plan


def _child(target: str, workdir: str, kwargs: dict, conn) -> None:
    os.setsid()  # own process group: the parent can kill the check with everything it started
    try:
        module, function = target.split(":")
        rows = getattr(importlib.import_module(module), function)(workdir, **kwargs)
        conn.send(("ok", rows))
    except BaseException as err:  # noqa: BLE001 - reported as the check's failure
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()
    for cleanup in CLEANUP:
        cleanup()


def run_bounded(check: Check, workdir: str, grace_s: float = 30.0) -> list[Row]:
    """Run one check in a spawned process; a check that has not answered in ``timeout_s`` is killed."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    process = ctx.Process(target=_child, args=(check.target, workdir, check.kwargs, send), daemon=False)
    process.start()
    send.close()
    answered = receive.poll(check.timeout_s)  # also true when the child died (end of file)
    message = None
    if answered:
        try:
            message = receive.recv()
        except EOFError:
            pass
    seconds = time.perf_counter() - start
    process.join(grace_s if answered else 0)
    if process.is_alive():
        _kill_group(process)
    if not answered:
        return [Row(r, TIMEOUT, seconds, f"no answer within {check.timeout_s:.0f} s: killed (a hang)")
                for r in check.rows]
    if message is None:
        return [Row(r, FAIL, seconds, f"check process died (exit code {process.exitcode})") for r in check.rows]
    kind, payload = message
    if kind == "error":
        return [Row(r, FAIL, seconds, payload.strip().splitlines()[0] if payload else "error") for r in check.rows]
    rows = []
    for r in check.rows:
        if r in payload:
            passed, detail = payload[r]
            rows.append(Row(r, PASS if passed else FAIL, seconds, str(detail)))
        else:
            rows.append(Row(r, FAIL, seconds, "not reported by the check"))
    return rows


def _kill_group(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.join(10)


def skipped_rows(plan: list[tuple[Check, str | None]]) -> list[Row]:
    return [Row(r, SKIP, 0.0, reason) for check, reason in plan if reason is not None for r in check.rows]


def format_table(rows: list[Row]) -> str:
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'check':<{width}}  result   seconds  detail", "-" * (width + 40)]
    for r in rows:
        seconds = f"{r.seconds:7.1f}" if r.status != SKIP else "      -"
        lines.append(f"{r.name:<{width}}  {r.status:<7}  {seconds}  {r.detail}")
    return "\n".join(lines)


def exit_code(rows: list[Row]) -> int:
    """0 = everything that ran passed; 1 = a check failed or hung; 3 = nothing ran (no CUDA device)."""
    ran = [r for r in rows if r.status != SKIP]
    if not ran:
        return EXIT_NO_GPU
    return EXIT_OK if all(r.status == PASS for r in ran) else EXIT_FAILED
