"""How well a step critic agrees with the teacher's step scores: pure functions over (teacher, predicted) pairs.

- parse rate: share of steps whose score was read from the critic's own output (not the configured default);
- MAE and Spearman's rho (average ranks for ties) of predicted vs teacher scores over all held-out steps;
- pairwise ranking accuracy: over pairs of steps of the same path whose teacher scores differ, the share the
  critic orders the same way (a tie in the prediction counts half);
- share of predictions at the range limits (|s| >= 0.995) and at the top: a flattering critic piles up at +1.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

LIMIT = 0.995


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side is constant or has fewer than two values."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"pearson: {n} and {len(y)} values")
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def pairwise_accuracy(paths: Sequence[Sequence[tuple[float, float]]]) -> tuple[float, int]:
    """(accuracy, number of pairs) over within-path step pairs with different teacher scores.

    ``paths``: per path, (teacher, predicted) per step."""
    agree, pairs = 0.0, 0
    for steps in paths:
        for (t1, p1), (t2, p2) in combinations(steps, 2):
            if t1 == t2:
                continue
            pairs += 1
            if p1 == p2:
                agree += 0.5
            elif (t1 > t2) == (p1 > p2):
                agree += 1.0
    return (agree / pairs if pairs else math.nan), pairs


def critic_report(rows: Sequence[dict]) -> dict[str, float]:
    """Metrics over prediction rows ``{"path_id", "teacher", "predicted", "parsed"}``."""
    if not rows:
        raise ValueError("critic_report: no predictions")
    teacher = [float(r["teacher"]) for r in rows]
    predicted = [float(r["predicted"]) for r in rows]
    by_path: dict[str, list[tuple[float, float]]] = {}
    for r, t, p in zip(rows, teacher, predicted):
        by_path.setdefault(r["path_id"], []).append((t, p))
    accuracy, pairs = pairwise_accuracy(list(by_path.values()))
    n = len(rows)
    return {
        "steps": n,
        "paths": len(by_path),
        "parse_rate": sum(bool(r["parsed"]) for r in rows) / n,
        "mae": sum(abs(t - p) for t, p in zip(teacher, predicted)) / n,
        "spearman": spearman(predicted, teacher),
        "pairwise_accuracy": accuracy,
        "pairs": pairs,
        "share_at_limits": sum(abs(p) >= LIMIT for p in predicted) / n,
        "share_at_top": sum(p >= LIMIT for p in predicted) / n,
        "mean_predicted": sum(predicted) / n,
        "mean_teacher": sum(teacher) / n,
    }


COLUMNS = (("parse_rate", "parse rate", "{:.1%}"), ("mae", "MAE", "{:.3f}"), ("spearman", "Spearman", "{:+.3f}"),
           ("pairwise_accuracy", "pairwise acc.", "{:.1%}"), ("share_at_limits", "at ±1", "{:.1%}"),
           ("share_at_top", "at +1", "{:.1%}"), ("mean_predicted", "mean pred.", "{:+.3f}"),
           ("mean_teacher", "mean teacher", "{:+.3f}"), ("steps", "steps", "{}"), ("pairs", "pairs", "{}"))


def markdown_table(reports: dict[str, dict]) -> str:
    """One row per critic (label -> :func:`critic_report`)."""
    def cell(value, fmt):
        return "n/a" if isinstance(value, float) and math.isnan(value) else fmt.format(value)

    lines = ["| critic | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    for label, rep in reports.items():
        lines.append(f"| {label} | " + " | ".join(cell(rep[key], fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)
