"""Served reward vs in-process reward service on the same judge: requests/s and p50/p95 latency at concurrency 1
and 16 (one response of ``--steps`` steps per request, the way OpenRLHF's executor posts one sample at a time).

- served       ``POST /get_reward`` over loopback HTTP to one Ray Serve replica (``@serve.batch`` folds
               concurrent requests into one engine call), ``--concurrency`` client threads
- in-process   the ``RewardService`` of a training run in this process, called from ``--concurrency`` threads
               (its MicroBatcher folds concurrent calls, as for streamed groups)

Both use the same config (``reward`` section: judge model, dtype, critique budget, constrained score line) and
both engines stay loaded for the whole run; the measurements are interleaved (served c=1, in-process c=1,
served c=16, ...). Every measurement scores fresh responses (a run tag in each step), so no answer comes from
the reward cache. Latency is per request, from send to reply.

    python benchmarks/bench_serve_reward.py                                   # tiny judge (serve_tiny preset)
    python benchmarks/bench_serve_reward.py reward.model=smollm2-135m-instruct reward.dtype=bfloat16 \\
        reward.kv_block_size=32 reward.critique_max_tokens=48
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (the judge: reward.*)")
    p.add_argument("--config", default="serve_tiny", help="config preset (reward + serve sections)")
    p.add_argument("--concurrency", default="1,16", help="comma list of client concurrencies")
    p.add_argument("--requests", type=int, default=32, help="requests per measurement")
    p.add_argument("--steps", type=int, default=3, help="steps per response")
    p.add_argument("--repeats", type=int, default=1)
    return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def make_records(count: int, steps: int, tag: str):
    from cdra_ray.data.scenarios import load_scenarios
    from cdra_ray.serving.protocol import ScoreRecord

    scenarios = load_scenarios("builtin:prefeval_sample")
    out = []
    for i in range(count):
        s = scenarios[i % len(scenarios)]
        body = "\n".join(f"Step {k}: ({tag}-{i}) point {k} about {s.query[:60]}" for k in range(1, steps + 1))
        out.append(ScoreRecord(preference=s.preference, query=s.query, response=body))
    return out


def drive(call, items, concurrency: int) -> tuple[float, list[float]]:
    """Run ``call(item)`` for every item from ``concurrency`` threads: (wall seconds, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(item):
        start = time.perf_counter()
        call(item)
        with lock:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, items))
    return time.perf_counter() - start, latencies


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.quiet_logs()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.config import load_config
    from cdra_ray.config.schema import DEMO_MODEL
    from cdra_ray.train import resolve_model_setting

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(args.config, [*args.overrides, "serve.num_replicas=1", f"serve.port={port}",
                                       f"serve.max_batch_size={max(concurrencies)}"])
    w = config.reward
    # the in-process engine gets the replica's process environment (OpenMP reads its thread count at start)
    common.reexec_with(actor_env(w.num_cpus, w.engine, w.kv_cache_gb))
    reward_dir = resolve_model_setting(w.model or DEMO_MODEL)

    import ray

    from cdra_ray.serving.launch import start_reward_service, stop_reward_service
    from cdra_ray.serving.scorer import build_scorer, record_groups

    ray.init(num_cpus=max(4, int(w.num_cpus) + 2), include_dashboard=False, log_to_driver=False)
    print("[serve] starting the served replica", file=sys.stderr)
    served = start_reward_service(config)
    print("[serve] building the in-process service", file=sys.stderr)
    local = common.in_fresh_thread(lambda: build_scorer(config, reward_dir))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post_one(record):
        prompt = f"User preference: {record.preference}\nQuestion: {record.query}\n\nAnswer:\n"
        data = json.dumps({"query": [prompt + record.response], "prompts": [prompt]}).encode()
        request = urllib.request.Request(served.route("get_reward"), data=data,
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=600) as reply:
            body = json.loads(reply.read())
        assert len(body["step_rewards"][0]) == args.steps, body

    def local_call(record):  # the training path: one call per group, the MicroBatcher folds concurrent ones
        group = record_groups([record])[0]
        scored = local.service.score_group(group)
        assert len(scored.step_scores[0]) == args.steps

    variants = {"served (HTTP, Ray Serve)": post_one, "in-process RewardService": local_call}
    warm = make_records(4, args.steps, "warm")
    for call in variants.values():  # first engine calls compile/allocate: keep them out of the figures
        drive(call, warm, 4)

    rows, results = [], {}
    for repeat in range(args.repeats):
        for c in concurrencies:
            for name, call in variants.items():
                records = make_records(args.requests, args.steps, f"r{repeat}c{c}{name[:3]}")
                seconds, lat = drive(call, records, c)
                results.setdefault(f"{name} c={c}", []).append(
                    {"rps": len(records) / seconds, "p50": percentile(lat, 50), "p95": percentile(lat, 95)})
    for key, runs in results.items():
        rps = common.median([r["rps"] for r in runs])
        p50 = common.median([r["p50"] for r in runs])
        p95 = common.median([r["p95"] for r in runs])
        name, c = key.rsplit(" c=", 1)
        rows.append([name, int(c), rps, p50, p95])
    health = json.loads(opener.open(served.route("health")).read())
    stop_reward_service()
    ray.shutdown()

    table = common.format_table(
        ["service", "concurrency", "requests/s", "p50 s", "p95 s"], rows,
        title=(f"Reward service, served vs in-process ({args.requests} requests x {args.steps} steps per "
               f"measurement, judge {w.model}, {w.engine}, critique {w.critique_max_tokens} tokens)"))
    payload = {"rows": [dict(zip(["service", "concurrency", "rps", "p50_s", "p95_s"], r)) for r in rows],
               "requests": args.requests, "steps": args.steps, "judge": w.model, "engine": w.engine,
               "critique_max_tokens": w.critique_max_tokens, "served_model_calls": health["metrics"].get(
                   "serve/model_calls"), "machine": common.machine_info()}
    notes = [f"served replica: {health['metrics'].get('serve/records'):.0f} records in "
             f"{health['metrics'].get('serve/model_calls'):.0f} model calls (request batching)"]
    common.print_report(table, "serve_reward", payload, notes)
    return payload


if __name__ == "__main__":
    main()
