"""Run the reward paradigms of the paper's Table 3 with equal budgets and compare them in one table.

    run_ablation(["grpo_rm", "grpo_grm", "cdra_pers_genprm"], overrides=["data.max_scenarios=20"], budget=50)

Each preset (a file in ``configs/ablations/``, or any preset name / YAML path) is loaded with the same ``overrides``
and ``train.total_updates=budget``; before anything runs, the presets must agree on everything that makes the
budget equal (:data:`EQUAL_BUDGET_KEYS`: updates, groups per update, group size, data, seeds, policy, sampling),
else a :class:`~cdra_ray.config.ConfigError` names the key and each preset's value. The runs then go one after the
other through :func:`cdra_ray.train.run_training` into ``<output_dir>/runs/<preset>``, and one comparison table is
written from their ``metrics.jsonl`` as ``ablation.md``, ``ablation.csv`` and ``ablation.json`` in ``output_dir``.

The table (built by the pure :func:`comparison_rows`) has per run: reward statistics (mean and spread of the
step scores, response return, first-half vs second-half trend), the zero-advantage rate (mean over updates of the
share of groups whose advantages are all zero, ``advantage/zero_rate``), seconds per update (the driver's own
phases: wait + learn + weight_sync + checkpoint), the reward model's seconds per update, the run-level parse rate
(``n/a`` for score-head models, which parse nothing) and the number of defaulted scores. Other metrics (e.g. an
evaluation's) join as extra columns (``extra=``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cdra_ray.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

ABLATION_DIR = Path(__file__).resolve().parents[1] / "configs" / "ablations"
# Table 3's rows, in the paper's order.
TABLE3_PRESETS = ("grpo_rm", "grpo_grm", "grpo_prm", "grpo_rubric", "grpo_tts", "cdra_pers_genprm")
# What must be equal for budgets to be equal (the reward paradigm and its estimator are what differs).
EQUAL_BUDGET_KEYS = (
    "train.total_updates", "train.groups_per_update", "train.seed", "train.max_staleness",
    "data.path", "data.seed", "data.shuffle", "data.max_scenarios",
    "model.policy", "rollout.group_size", "rollout.temperature", "rollout.top_p", "rollout.max_new_tokens",
    "learner.lr", "learner.ppo_epochs", "algorithm.beta", "algorithm.clip_eps",
)
DRIVER_PHASES = ("timing/wait", "timing/learn", "timing/weight_sync", "timing/checkpoint")  # disjoint, cover an update
COLUMNS = (
    "preset", "reward_kind", "advantage", "updates", "reward_step_mean", "reward_step_std", "reward_response_mean",
    "reward_first_half", "reward_second_half", "zero_adv_rate", "sec_per_update", "reward_sec_per_update",
    "parse_rate", "defaulted_scores",
)


# ----------------------------------------------------------------------------------------------- presets
def resolve_ablation_preset(name: str) -> str:
    """A name in ``configs/ablations/`` (``grpo_rm``) -> its path; anything else is passed on to load_config."""
    candidate = ABLATION_DIR / f"{name}.yaml"
    return str(candidate) if candidate.is_file() else name


def preset_label(name: str) -> str:
    """The run name of a preset: its file stem (``configs/ablations/grpo_rm.yaml`` -> ``grpo_rm``)."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) else Path(name).name


def split_presets_and_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """CLI helper: ``key=value`` items are overrides, the others preset names; no preset = all of Table 3."""
    presets = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    return presets or list(TABLE3_PRESETS), overrides


def _get(config: Config, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_equal_budgets(named: Sequence[tuple[str, Config]], keys: Sequence[str] = EQUAL_BUDGET_KEYS) -> None:
    """Raise :class:`ConfigError` naming every key on which the presets disagree, with each preset's value."""
    problems = []
    for key in keys:
        values = {label: _get(config, key) for label, config in named}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            problems.append(f"{key}: " + ", ".join(f"{label}={value!r}" for label, value in values.items()))
    if problems:
        raise ConfigError(
            "ablation presets must share their budget, data and seeds; they differ on\n  " + "\n  ".join(problems)
            + "\nmake them equal with overrides (applied to every preset), e.g. " + problems[0].split(":")[0] + "=..."
        )


def ablation_configs(presets: Sequence[str], overrides: Sequence[str] = (), budget: int | None = None,
                     output_dir: str | Path = "runs/ablation") -> list[tuple[str, Config]]:
    """(label, config) per preset, with the shared overrides, the budget and one run directory per preset."""
    if not presets:
        raise ConfigError("run_ablation: no presets given")
    labels = [preset_label(p) for p in presets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"run_ablation: presets {duplicates} appear twice (run names come from file stems)")
    if budget is not None and budget < 1:
        raise ConfigError(f"run_ablation: budget (train.total_updates) must be >= 1, got {budget}")
    runs_dir = Path(output_dir) / "runs"
    extra = [f"train.total_updates={budget}"] if budget is not None else []
    named = []
    for preset, label in zip(presets, labels):
        config = load_config(resolve_ablation_preset(preset),
                             [*overrides, *extra, f"run.output_dir={runs_dir}", f"run.name={label}"])
        named.append((label, config))
    check_equal_budgets(named)
    return named


# ----------------------------------------------------------------------------------------------- the table (pure)
@dataclass
class RunMetrics:
    """One finished run: what it was and its metrics.jsonl records."""

    preset: str
    reward_kind: str
    advantage: str
    records: list[dict] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float | None:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def summarize_records(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The table's numbers for one run (None where the run logged nothing to compute them from)."""
    def series(key: str) -> list[float]:
        return [r[key] for r in records if key in r]

    half = max(1, len(records) // 2)
    first, second = records[:half], records[half:] or records[-1:]
    seconds = [sum(float(r.get(k, 0.0)) for k in DRIVER_PHASES) for r in records
               if any(k in r for k in DRIVER_PHASES)]
    parse_rates = series("reward/parse_rate")  # cumulative over the run: the last one is the run's figure
    defaulted = series("reward/defaulted_steps")
    return {
        "updates": float(len(records)),
        "reward_step_mean": _mean(series("reward/step_mean")),
        "reward_step_std": _mean(series("reward/step_std")),
        "reward_response_mean": _mean(series("reward/response_sum_mean")),
        "reward_first_half": _mean([r["reward/step_mean"] for r in first if "reward/step_mean" in r]),
        "reward_second_half": _mean([r["reward/step_mean"] for r in second if "reward/step_mean" in r]),
        "zero_adv_rate": _mean(series("advantage/zero_rate")),
        "sec_per_update": _mean(seconds),
        "reward_sec_per_update": _mean(series("timing/reward")),
        "parse_rate": float(parse_rates[-1]) if parse_rates else None,
        "defaulted_scores": float(sum(defaulted)) if defaulted else None,
    }


def comparison_rows(runs: Sequence[RunMetrics],
                    extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per run, in :data:`COLUMNS` order, plus any ``extra[preset]`` columns (e.g. evaluation metrics)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"preset": run.preset, "reward_kind": run.reward_kind, "advantage": run.advantage}
        row.update(summarize_records(run.records))
        row["updates"] = int(row["updates"])
        row.update((extra or {}).get(run.preset, {}))
        rows.append(row)
    return rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def write_comparison(rows: Sequence[Mapping[str, Any]], output_dir: str | Path,
                     info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``ablation.md``, ``ablation.csv`` and ``ablation.json`` (rows + ``info``: presets, budget, overrides)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "ablation.md", "csv": out / "ablation.csv", "json": out / "ablation.json"}
    header = "# Reward-paradigm ablation (paper Table 3)\n\n"
    if info:
        header += "".join(f"- {k}: {v}\n" for k, v in info.items()) + "\n"
    paths["markdown"].write_text(header + to_markdown(rows), encoding="utf-8")
    paths["csv"].write_text(to_csv(rows), encoding="utf-8")
    paths["json"].write_text(json.dumps({**(info or {}), "rows": list(rows)}, indent=1, default=str), encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------------------------- orchestration
def run_ablation(
    presets: Sequence[str] = TABLE3_PRESETS,
    overrides: Sequence[str] = (),
    budget: int | None = None,
    *,
    output_dir: str | Path = "runs/ablation",
    skip_existing: bool = False,
    train_fn: Callable[[Config], dict] | None = None,
) -> list[dict[str, Any]]:
    """Run ``presets`` one after the other with equal budgets; write and return the comparison rows.

    ``skip_existing``: a preset whose run directory already holds a finished run (``summary.json``) is not run
    again, its metrics are read (to add presets to an ablation, or to rebuild the table). ``train_fn`` defaults to
    :func:`cdra_ray.train.run_training` (tests pass a fake).
    """
    from cdra_ray.driver.metrics import read_metrics

    named = ablation_configs(presets, overrides, budget, output_dir)  # all configs checked before any run starts
    if train_fn is None:
        from cdra_ray.train import run_training as train_fn
    runs = []
    for index, (label, config) in enumerate(named, start=1):
        run_dir = Path(config.run.output_dir) / config.run.name
        if skip_existing and (run_dir / "summary.json").is_file():
            log.info("ablation %d/%d: %s already finished in %s, reading its metrics", index, len(named), label,
                     run_dir)
        else:
            log.info("ablation %d/%d: %s (reward.kind=%s, advantage=%s, %d updates)", index, len(named), label,
                     config.reward.kind, config.algorithm.advantage, config.train.total_updates)
            train_fn(config)
        runs.append(RunMetrics(label, config.reward.kind, config.algorithm.advantage, read_metrics(run_dir)))
    rows = comparison_rows(runs)
    info = {"presets": [label for label, _ in named], "budget": named[0][1].train.total_updates,
            "overrides": list(overrides)}
    paths = write_comparison(rows, output_dir, info)
    log.info("ablation table written to %s", paths["markdown"])
    return rows
