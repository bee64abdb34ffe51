"""The construction output directory: append-as-you-go JSONL, resume by finished ids, and the final statistics.

``trees.jsonl`` is the source of truth: one line per finished scenario, appended and flushed as each finishes.
``d_rea.jsonl`` / ``d_rft.jsonl`` / ``deeppref_trees.jsonl`` are appended alongside and rebuilt from
``trees.jsonl`` at the end (so a crash between two appends cannot leave them out of step); ``stats.json`` and
``stats.md`` summarise every finished scenario, including those of earlier (resumed) runs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from cdra_ray.construction.records import d_rea_records, d_rft_record, to_thought_tree

TREES, D_REA, D_RFT, DEEPPREF = "trees.jsonl", "d_rea.jsonl", "d_rft.jsonl", "deeppref_trees.jsonl"


def read_trees(out_dir: Path) -> list[dict]:
    """Finished trees; a torn last line (a crash mid-write) is ignored and will be rebuilt."""
    path = out_dir / TREES
    if not path.is_file():
        return []
    trees = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            trees.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return trees


def finished_ids(out_dir: Path) -> set[str]:
    return {t["id"] for t in read_trees(out_dir)}


class OutputWriter:
    def __init__(self, out_dir: Path, best_path_by: str):
        self.out_dir, self.best_path_by = out_dir, best_path_by
        out_dir.mkdir(parents=True, exist_ok=True)
        self._repair(out_dir / TREES)

    @staticmethod
    def _repair(path: Path) -> None:
        """Drop a torn last line so the next append starts on a fresh line."""
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")

    def _append(self, name: str, records: list[dict]) -> None:
        if records:
            with open(self.out_dir / name, "a", encoding="utf-8") as sink:
                sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                sink.flush()

    def add(self, tree: dict) -> None:
        self._append(TREES, [tree])
        self._append(D_REA, d_rea_records(tree))
        rft = d_rft_record(tree, self.best_path_by)
        self._append(D_RFT, [rft] if rft else [])

    def finalize(self, run_info: dict | None = None) -> dict:
        """Rewrite the derived files from trees.jsonl and write stats; returns the stats."""
        trees = read_trees(self.out_dir)
        rea = [r for t in trees for r in d_rea_records(t)]
        rft = [r for r in (d_rft_record(t, self.best_path_by) for t in trees) if r is not None]
        for name, records in ((D_REA, rea), (D_RFT, rft), (DEEPPREF, [to_thought_tree(t) for t in trees])):
            (self.out_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                             encoding="utf-8")
        stats = compute_stats(trees, len(rea), len(rft), run_info or {})
        (self.out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        (self.out_dir / "stats.md").write_text(stats_markdown(stats), encoding="utf-8")
        return stats


# ----------------------------------------------------------------------------------------------- statistics
def histogram(values: list[float], low: float, high: float, bins: int) -> dict[str, int]:
    """Counts per equal-width bin over [low, high] (the top edge falls in the last bin), keyed "a..b"."""
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(math.floor((v - low) / width))))] += 1
    return {f"{low + k * width:+.1f}..{low + (k + 1) * width:+.1f}": c for k, c in enumerate(counts)}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    ordered = sorted(values)
    return {"n": len(values), "mean": round(mean, 4), "sd": round(sd, 4), "min": ordered[0], "max": ordered[-1],
            "median": ordered[len(ordered) // 2], "distinct": len(set(values))}


def compute_stats(trees: list[dict], n_rea: int, n_rft: int, run_info: dict) -> dict:
    nodes = [n for t in trees for n in t["nodes"]]
    paths = [p for t in trees for p in t["paths"]]
    usage: Counter = Counter()
    for t in trees:
        usage.update(t.get("usage", {}))
    by_persona: dict[str, dict] = {}
    for n in nodes:
        entry = by_persona.setdefault(n["persona"], {"generated": 0, "kept": 0, "pruned": 0, "unusable": 0})
        entry["generated"] += 1
        entry["unusable"] += n["status"] == "unusable"
        entry["pruned"] += n["pruned"]
        entry["kept"] += n["status"] == "ok" and not n["pruned"]
    values = [n["value_score"] for n in nodes if n["value_score"] is not None]
    steps = [s for p in paths for s in p["step_scores"] if s is not None]
    finals = [p["final_score"] for p in paths if p["final_score"] is not None]
    judged = {k: sum(usage[f"{k}_route_{r}"] for r in ("constrained", "free", "default"))
              for k in ("value", "final", "step")}
    parse = {k: {"requests": judged[k], "constrained": usage[f"{k}_route_constrained"],
                 "free": usage[f"{k}_route_free"], "default": usage[f"{k}_route_default"],
                 "retried": usage[f"{k}_retried"], "unusable": usage[f"{k}_unusable"],
                 "parse_rate": round((judged[k] - usage[f"{k}_route_default"]) / judged[k], 4) if judged[k] else None}
             for k in judged}
    parse.update({k: {"calls": usage[f"{k}_calls"], "retried": usage[f"{k}_retried"],
                      "unusable": usage[f"{k}_unusable"]} for k in ("thought", "answer")})
    seconds = run_info.get("build_seconds")
    return {
        "scenarios": len(trees),
        "nodes": {"generated": len(nodes), "kept": sum(n["status"] == "ok" and not n["pruned"] for n in nodes),
                  "pruned_threshold": sum(n.get("prune_reason") == "threshold" for n in nodes),
                  "pruned_beam": sum(n.get("prune_reason") == "beam" for n in nodes),
                  "unusable": sum(n["status"] == "unusable" for n in nodes)},
        "survival_by_persona": by_persona,
        "paths": {"total": len(paths), "per_scenario": round(len(paths) / len(trees), 3) if trees else 0,
                  "answer_unusable": usage["paths_unusable_answer"]},
        "records": {"d_rea": n_rea, "d_rft": n_rft},
        "value_scores": {**_summary(values), "histogram": histogram(values, -1.0, 1.0, 10)},
        "step_scores": {**_summary(steps), "histogram": histogram(steps, -1.0, 1.0, 10)},
        "final_scores": {**_summary(finals), "histogram": histogram(finals, 0.0, 100.0, 10)},
        "parse": parse,
        "tokens_generated": usage["tokens_generated"],
        "seconds": {"scenario_total": round(usage["seconds"], 2), "generate": round(usage["seconds_generate"], 2),
                    "value": round(usage["seconds_value"], 2), "final": round(usage["seconds_final"], 2),
                    "step": round(usage["seconds_step"], 2), "wall_this_run": seconds},
        "run": run_info,
    }


def stats_markdown(s: dict) -> str:
    n = s["nodes"]
    lines = [
        "# DeepPref construction statistics", "",
        f"- scenarios: {s['scenarios']}; paths: {s['paths']['total']} ({s['paths']['per_scenario']} per scenario)",
        f"- nodes generated {n['generated']}, kept {n['kept']}, pruned by threshold {n['pruned_threshold']}, "
        f"by beam {n['pruned_beam']}, unusable {n['unusable']}",
        f"- records: d_rea {s['records']['d_rea']}, d_rft {s['records']['d_rft']}",
        f"- generator tokens (thoughts and answers; judge tokens not counted): {s['tokens_generated']}; "
        f"seconds: {s['seconds']}", "",
        "## Survival by persona", "", "| persona | generated | kept | pruned | unusable |", "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {name} | {e['generated']} | {e['kept']} | {e['pruned']} | {e['unusable']} |"
              for name, e in s["survival_by_persona"].items()]
    lines += ["", "## Parse outcomes", "", "```", json.dumps(s["parse"], indent=1), "```", ""]
    for key in ("value_scores", "step_scores", "final_scores"):
        summary = {k: v for k, v in s[key].items() if k != "histogram"}
        lines += [f"## {key.replace('_', ' ')}", "", f"{summary}", "", "| bin | count |", "| --- | --- |"]
        lines += [f"| {b} | {c} |" for b, c in s[key]["histogram"].items()] + [""]
    return "\n".join(lines)
