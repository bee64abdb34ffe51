"""Seconds per learner update on 1 rank vs N data-parallel ranks (``learner.num_ranks``), same batch, same cores.

Both learners are real Ray actor groups (:func:`cdra_ray.actors.learner_group.start_learner_group`, the code a
run uses), alive side by side and driven in turns (1 rank, N ranks, 1 rank, ...) so a neighbour's load hits
both alike. The comparison holds the machine's cores fixed: 1 rank with ``--cpus`` threads against N ranks with
``--cpus / N`` threads each. On a 2-core machine the N-rank learner cannot be faster: the same FLOPs run on the
same cores, plus a gradient all-reduce (gloo) and one zero-weighted pass per rank when rows do not split evenly;
what it buys is memory (ZeRO shards across ranks) and, on several GPUs or nodes, more devices.

    python benchmarks/bench_learner_ranks.py                              # SmolLM2-135M, G=5, 2 ranks, ZeRO-2
    python benchmarks/bench_learner_ranks.py --model tiny --zero-stage 3  # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_learner import resolve_model, synthetic_groups  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (the demo model), tiny, or an HF model directory")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel learner")
    p.add_argument("--cpus", type=int, default=2, help="cores in total: 1 rank gets all, N ranks cpus/N each")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--groups", type=int, default=2, help="groups per update")
    p.add_argument("--prompt-tokens", type=int, default=96)
    p.add_argument("--response-tokens", type=int, default=96)
    p.add_argument("--micro-batch-size", type=int, default=5)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cpus % args.ranks:
        raise SystemExit(f"--cpus {args.cpus} must be a multiple of --ranks {args.ranks}")
    common.quiet_logs()
    import ray

    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.learner_group import start_learner_group
    from cdra_ray.learner.learner import LearnerSettings

    ray.init(num_cpus=2 * args.cpus, include_dashboard=False, log_to_driver=False)
    groups = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_ranks_") as tmp:
            model_dir = resolve_model(args.model, Path(tmp))
            batch = synthetic_groups(model_dir, args)
            for ranks in (1, args.ranks):
                threads = args.cpus // ranks
                settings = LearnerSettings(model_dir=str(model_dir), lr=5e-6, beta=args.beta, advantage="grpo",
                                           micro_batch_size=args.micro_batch_size, zero_stage=args.zero_stage,
                                           num_threads=threads)
                groups[ranks] = start_learner_group(settings, num_ranks=ranks, num_cpus=threads, num_gpus=0,
                                                    env_vars=actor_env(threads))
            batch_ref = ray.put(batch)
            variants = {f"{r} rank{'s' if r > 1 else ''} x {args.cpus // r} threads":
                        (lambda g=g: ray.get(g.train_on_groups.remote(batch_ref))) for r, g in groups.items()}
            measured = common.interleaved(variants, warmup=args.warmup, repeats=args.repeats)
    finally:
        for group in groups.values():
            group.kill()
        ray.shutdown()

    labels = list(variants)
    times = {label: measured[label][0] for label in labels}
    results = {label: measured[label][1] for label in labels}
    seconds = {label: common.median(times[label]) for label in labels}
    rows = [[label, seconds[label], min(times[label]), max(times[label]),
             common.ratio(seconds[label], seconds[labels[0]])] for label in labels]
    table = common.format_table(["learner", "s/update (median)", "min", "max", "vs 1 rank"], rows,
                                title=f"{args.model}, ZeRO-{args.zero_stage}, {args.groups} x {args.group_size} rows "
                                      f"of {args.prompt_tokens}+{args.response_tokens} tokens, {args.cpus} cores")
    losses = {label: float(results[label][-1]["loss"]) for label in labels}
    payload = {"model": args.model, "zero_stage": args.zero_stage, "cpus": args.cpus, "ranks": args.ranks,
               "seconds_per_update": seconds, "all_seconds": times, "last_loss": losses,
               "machine": common.machine_info()}
    common.print_report(table, "learner_ranks", payload,
                        notes=["same cores for both: the N-rank learner pays an all-reduce and cannot be faster "
                               "on CPU; ranks exist for memory (ZeRO) and for more GPUs/nodes"])
    return payload


if __name__ == "__main__":
    main()
