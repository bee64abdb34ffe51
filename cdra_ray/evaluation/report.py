"""The evaluation report: Table 1's shape with bootstrap intervals, a per-topic breakdown, the radar of Fig. 4,
training curves, and the step-format statistics.

Files written into the output directory: ``table.md`` / ``table.csv`` (one row per method), ``topics.md`` /
``topics.csv`` (one row per method and topic), ``radar.png``, ``curves.png`` (when training runs are given),
``summary.json`` (everything above as numbers, plus judge parse and agreement rates).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from cdra_ray.algorithms.steps import find_step_markers, segment_steps
from cdra_ray.evaluation import metrics as M
from cdra_ray.evaluation.grading import FIRST_PASS, judgment_key, response_values

LABELS = {"acc_pf": "Acc_PF ↑", "acc_da": "Acc_DA ↑", "acc_mis": "Acc_Mis ↓", "m_th": "m_th ↑", "m_dm": "m_dm ↑",
          "m_ie": "m_ie ↑", "e_puv": "e_puv ↓", "e_hp": "e_hp ↓", "e_ir": "e_ir ↓", "e_ur": "e_ur ↓"}
CURVES = (("reward/step_mean", "reward (mean step score)"), ("learner/kl_mean", "KL to reference (mean per token)"),
          ("advantage/zero_rate", "zero-advantage rate"), ("reward/parse_rate", "critic parse rate"))


def response_answers(record: dict, judged: Mapping[str, dict], judge_id: str) -> dict[str, bool | None]:
    """Parsed answers of one response, by question (None = unparsed or not asked)."""
    def word(key):
        r = judged.get(key)
        return None if r is None or r["answer"] is None else r["answer"] == "Yes"

    values = response_values(record)
    answers = {q: word(judgment_key(judge_id, q, values)) for q in FIRST_PASS}
    ack = judged.get(judgment_key(judge_id, M.PF_ACKNOWLEDGE, values))
    if ack is not None and ack["answer"] == "Yes":
        hv = {"preference": record["preference"], "restatement": ack["explanation"]}
        answers[M.PF_HALLUCINATION] = word(judgment_key(judge_id, M.PF_HALLUCINATION, hv))
    return answers


def format_stats(texts: Sequence[str]) -> dict[str, float]:
    """Steps per response (:func:`segment_steps`) and the share in the step-by-step format (>= 2 line-start
    "Step k:" markers): a step-level reward is easily gamed by dropping the format, so it is reported beside
    the judge's metrics."""
    if not texts:
        return {"steps_mean": float("nan"), "step_format": float("nan")}
    return {"steps_mean": statistics.fmean(len(segment_steps(t)) for t in texts),
            "step_format": 100.0 * sum(len(find_step_markers(t)) >= 2 for t in texts) / len(texts)}


def method_rows(responses: Sequence[dict], judged: Mapping[str, dict], judge_id: str, methods: Sequence[str], *,
                samples: int, confidence: float, seed: int, by_topic: bool = False) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in responses:
        groups[(r["method"], r.get("topic", "") if by_topic else "")].append(r)
    rows = []
    for (method, topic), records in sorted(groups.items(), key=lambda kv: (methods.index(kv[0][0]), kv[0][1])):
        per = [M.response_metrics(response_answers(r, judged, judge_id)) for r in records]
        row = {"method": method, **({"topic": topic} if by_topic else {}), "n": len(records)}
        row["metrics"] = M.summarize(per, samples=samples, confidence=confidence, seed=seed)
        row.update(format_stats([r["response"] for r in records]))
        rows.append(row)
    return rows


def _cell(entry: Mapping, with_ci: bool = True) -> str:
    if entry["mean"] is None:
        return "n/a"
    text = f"{entry['mean']:.1f}"
    if with_ci:
        text += f" [{entry['low']:.1f}, {entry['high']:.1f}]"
    return text + (f" (n={entry['n']})" if entry["n_unparsed"] else "")


def to_markdown(rows: Sequence[dict], *, by_topic: bool = False, columns=M.ALL_METRICS) -> str:
    head = ["method"] + (["topic"] if by_topic else []) + ["N"] + [LABELS[c] for c in columns] + [
        "steps/resp", "step format %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"]] + ([row["topic"]] if by_topic else []) + [str(row["n"])]
        cells += [_cell(row["metrics"][c], with_ci=not by_topic) for c in columns]
        cells += [f"{row['steps_mean']:.2f}", f"{row['step_format']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict], *, by_topic: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["method"] + (["topic"] if by_topic else []) + ["n"]
    for c in M.ALL_METRICS:
        head += [c, f"{c}_low", f"{c}_high", f"{c}_n"]
    writer.writerow(head + ["steps_mean", "step_format"])
    for row in rows:
        cells = [row["method"]] + ([row["topic"]] if by_topic else []) + [row["n"]]
        for c in M.ALL_METRICS:
            e = row["metrics"][c]
            cells += ["" if e[k] is None else round(e[k], 3) for k in ("mean", "low", "high")] + [e["n"]]
        writer.writerow(cells + [round(row["steps_mean"], 3), round(row["step_format"], 2)])
    return buffer.getvalue()


def radar_values(row: dict) -> list[float]:
    """Fig. 4's six axes, higher = better: Acc_PF, Acc_DA, 100 - Acc_Mis, m_th, m_dm, m_ie (missing -> 0)."""
    def get(c):
        v = row["metrics"][c]["mean"]
        return 0.0 if v is None else v
    return [get("acc_pf"), get("acc_da"), 100.0 - get("acc_mis") if row["metrics"]["acc_mis"]["mean"] is not None
            else 0.0, get("m_th"), get("m_dm"), get("m_ie")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_radar(rows: Sequence[dict], path: Path) -> None:
    plt = _pyplot()
    axes_labels = ["Acc_PF", "Acc_DA", "100 - Acc_Mis", "m_th", "m_dm", "m_ie"]
    angles = [2 * math.pi * k / len(axes_labels) for k in range(len(axes_labels))]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(111, polar=True)
    for row in rows:
        values = radar_values(row)
        ax.plot(angles + angles[:1], values + values[:1], label=row["method"], linewidth=1.5)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(axes_labels)
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(runs: Mapping[str, Sequence[dict]], path: Path) -> None:
    """Reward, KL, zero-advantage rate and critic parse rate per update, one line per training run."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, CURVES):
        for label, records in runs.items():
            points = [(r["update"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("update")
        if any(ax.get_lines()):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def judge_stats(judged: Mapping[str, dict], agreement: Sequence[dict]) -> dict:
    records = list(judged.values())
    pairs = [(None if a["first"] is None else a["first"] == "Yes", None if a["second"] is None else a["second"] == "Yes")
             for a in agreement]
    rate, n = M.agreement_rate(pairs)
    by_question = defaultdict(lambda: [0, 0])
    for r in records:
        by_question[r["question"]][0] += 1
        by_question[r["question"]][1] += int(not r["parsed"])
    return {
        "judgments": len(records),
        "unparsed": sum(not r["parsed"] for r in records),
        "unparsed_share": (sum(not r["parsed"] for r in records) / len(records)) if records else None,
        "retried": sum(r["attempts"] > 1 for r in records),
        "unparsed_by_question": {q: v[1] for q, v in sorted(by_question.items())},
        "self_agreement": rate, "self_agreement_n": n,
    }


def write_report(out: Path, rows: list[dict], topic_rows: list[dict], judge: dict, info: dict,
                 runs: Mapping[str, Sequence[dict]]) -> dict[str, Path]:
    header = ["# Evaluation (paper Table 1 shape)", ""]
    header += [f"- {k}: {v}" for k, v in info.items()]
    header += [f"- judge: {judge['judgments']} judgments, {judge['unparsed']} unparsed after one retry "
               f"({judge['retried']} retried), self-agreement "
               + ("n/a" if judge["self_agreement"] is None else f"{100 * judge['self_agreement']:.1f}%")
               + f" on {judge['self_agreement_n']} re-asked", "",
               "Percent of responses, with 95% bootstrap intervals; (n=...) marks metrics for which some judge "
               "answers could not be read (those responses are left out of that metric).", ""]
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv", "topics_md": out / "topics.md",
             "topics_csv": out / "topics.csv", "radar": out / "radar.png", "summary": out / "summary.json"}
    paths["table_md"].write_text("\n".join(header) + to_markdown(rows), encoding="utf-8")
    paths["table_csv"].write_text(to_csv(rows), encoding="utf-8")
    paths["topics_md"].write_text("# Per-topic breakdown\n\n" + to_markdown(topic_rows, by_topic=True,
                                                                            columns=M.TABLE1_METRICS), encoding="utf-8")
    paths["topics_csv"].write_text(to_csv(topic_rows, by_topic=True), encoding="utf-8")
    plot_radar(rows, paths["radar"])
    if runs:
        paths["curves"] = out / "curves.png"
        plot_curves(runs, paths["curves"])
    paths["summary"].write_text(json.dumps({**info, "judge": judge, "rows": rows, "topics": topic_rows},
                                           indent=1, default=str), encoding="utf-8")
    return paths
