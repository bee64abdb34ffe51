"""The evaluation metrics as pure functions over judge answers (paper §3.1, Eq. 4-5, App. B).

A judge answers one Yes/No question per (response, question). The questions (see :mod:`.prompts`) are:

- ``deep_mining`` (m_dm), ``innovative_expansion`` (m_ie), ``thoughtfulness`` (m_th): Yes = criterion met;
- ``misleading``: Yes = the response risks misleading the user (Acc_Mis = share of Yes, lower is better);
- PrefEval's four judge questions ``pf_acknowledge``, ``pf_hallucination``, ``pf_violation``, ``pf_helpful``,
  which :func:`prefeval_error_types` combines into the paper's four error types.

Acc_DA (Eq. 4) = mean over responses of max(I(m_dm), I(m_ie), I(m_th)).
Acc_PF (Eq. 5) = mean over responses of 1 - max(E(e_puv), E(e_hp), E(e_ir), E(e_ur)).

Unparsed answers (``None``) are never folded into a metric: a response enters a metric only when every answer
the metric needs was read (:func:`response_metrics` returns ``None`` for that metric otherwise); the share left
out is reported beside the metric.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Optional, Sequence

# question names (one judge call each)
DEEP_MINING, INNOVATIVE_EXPANSION, THOUGHTFULNESS, MISLEADING = (
    "deep_mining", "innovative_expansion", "thoughtfulness", "misleading")
PF_ACKNOWLEDGE, PF_HALLUCINATION, PF_VIOLATION, PF_HELPFUL = (
    "pf_acknowledge", "pf_hallucination", "pf_violation", "pf_helpful")
QUESTIONS = (DEEP_MINING, INNOVATIVE_EXPANSION, THOUGHTFULNESS, MISLEADING,
             PF_ACKNOWLEDGE, PF_VIOLATION, PF_HELPFUL, PF_HALLUCINATION)

# metric columns, Table 1's order first (all in percent of responses)
TABLE1_METRICS = ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie")
ERROR_METRICS = ("e_puv", "e_hp", "e_ir", "e_ur")
ALL_METRICS = TABLE1_METRICS + ERROR_METRICS
LOWER_IS_BETTER = frozenset({"acc_mis", *ERROR_METRICS})

Answer = Optional[bool]  # True = "Yes", False = "No", None = not parsed (or not asked)


def prefeval_error_types(acknowledge: bool, hallucination: Answer, violation: bool, helpful: bool) -> dict[str, bool]:
    """PrefEval's combination of its four judge answers into four error types (Zhao et al. 2025, repository
    amazon-science/PrefEval, ``generation_task/get_preference_following_accuracy_generation_task.py``):

    - hallucinated = acknowledged and the judge says the restated preference is not the user's;
    - e_ur  unhelpful response            = not helpful;
    - e_ir  inconsistent response         = acknowledged, not hallucinated, violates, helpful;
    - e_hp  hallucination of preference   = acknowledged, hallucinated, violates, helpful
      (PrefEval's "hallucination_of_preference_violation");
    - e_puv preference-unaware violation  = not acknowledged, violates, helpful.

    The hallucination question is only asked when the preference was acknowledged; without acknowledgement
    its answer is irrelevant (``None`` is fine then). Acc_PF counts a response correct iff none of the four holds.
    """
    if acknowledge and hallucination is None:
        raise ValueError("prefeval_error_types: an acknowledged preference needs the hallucination answer")
    hallucinated = bool(acknowledge and hallucination)
    unhelpful = not helpful
    return {
        "e_puv": (not acknowledge) and violation and not unhelpful,
        "e_hp": acknowledge and hallucinated and violation and not unhelpful,
        "e_ir": acknowledge and not hallucinated and violation and not unhelpful,
        "e_ur": unhelpful,
    }


def response_metrics(answers: Mapping[str, Answer]) -> dict[str, Optional[float]]:
    """Per-response indicators (0/1) of every metric in :data:`ALL_METRICS`; ``None`` where an answer it needs
    is missing. ``answers`` maps question name -> parsed answer."""
    a = {q: answers.get(q) for q in QUESTIONS}
    out: dict[str, Optional[float]] = {
        "m_dm": None if a[DEEP_MINING] is None else float(a[DEEP_MINING]),
        "m_ie": None if a[INNOVATIVE_EXPANSION] is None else float(a[INNOVATIVE_EXPANSION]),
        "m_th": None if a[THOUGHTFULNESS] is None else float(a[THOUGHTFULNESS]),
        "acc_mis": None if a[MISLEADING] is None else float(a[MISLEADING]),
    }
    da = [out["m_dm"], out["m_ie"], out["m_th"]]
    out["acc_da"] = None if any(v is None for v in da) else max(da)  # Eq. 4, per response
    ack, viol, helpful, hall = a[PF_ACKNOWLEDGE], a[PF_VIOLATION], a[PF_HELPFUL], a[PF_HALLUCINATION]
    if ack is None or viol is None or helpful is None or (ack and hall is None):
        out.update({k: None for k in (*ERROR_METRICS, "acc_pf")})
    else:
        errors = prefeval_error_types(ack, hall, viol, helpful)
        out.update({k: float(v) for k, v in errors.items()})
        out["acc_pf"] = 1.0 - max(out[k] for k in ERROR_METRICS)  # Eq. 5, per response
    return out


def acc_da(rows: Sequence[Mapping[str, bool]]) -> float:
    """Eq. 4 over fully answered responses: rows of {"m_dm", "m_ie", "m_th"} booleans."""
    if not rows:
        raise ValueError("acc_da needs at least one response")
    return sum(max(r["m_dm"], r["m_ie"], r["m_th"]) for r in rows) / len(rows)


def acc_pf(rows: Sequence[Mapping[str, bool]]) -> float:
    """Eq. 5: rows of {"e_puv", "e_hp", "e_ir", "e_ur"} booleans."""
    if not rows:
        raise ValueError("acc_pf needs at least one response")
    return sum(1 - max(r["e_puv"], r["e_hp"], r["e_ir"], r["e_ur"]) for r in rows) / len(rows)


def bootstrap_ci(values: Sequence[float], *, samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: ``samples`` resamples with replacement (``random.Random(seed)``),
    the (1-c)/2 and (1+c)/2 quantiles of their means (linear interpolation between order statistics)."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: samples >= 1 and 0 < confidence < 1, got {samples}, {confidence}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return _quantile(means, (1 - confidence) / 2), _quantile(means, (1 + confidence) / 2)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(per_response: Sequence[Mapping[str, Optional[float]]], *, samples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float | int | None]]:
    """Per metric: mean and bootstrap interval in percent over the responses that have it, ``n`` used and
    ``n_unparsed`` left out."""
    out: dict[str, dict[str, float | int | None]] = {}
    for k, metric in enumerate(ALL_METRICS):
        values = [r[metric] for r in per_response if r.get(metric) is not None]
        entry: dict[str, float | int | None] = {"n": len(values), "n_unparsed": len(per_response) - len(values),
                                                "mean": None, "low": None, "high": None}
        if values:
            low, high = bootstrap_ci(values, samples=samples, confidence=confidence, seed=seed + k)
            entry.update(mean=100.0 * sum(values) / len(values), low=100.0 * low, high=100.0 * high)
        out[metric] = entry
    return out


def agreement_rate(pairs: Sequence[tuple[Answer, Answer]]) -> tuple[float | None, int]:
    """Share of re-asked judgments whose second answer equals the first, over pairs where both parsed."""
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    return (sum(a == b for a, b in both) / len(both) if both else None), len(both)
