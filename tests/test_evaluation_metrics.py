"""Eq. 4 and Eq. 5 on small hand tables, PrefEval's error-type combination, the bootstrap interval."""

from __future__ import annotations

import random

import pytest

from cdra_ray.evaluation import metrics as M


def test_acc_da_eq4_hand_table():
    # max over (m_dm, m_ie, m_th): rows 1,2,4 satisfy at least one criterion -> 3/5
    rows = [dict(m_dm=1, m_ie=0, m_th=0), dict(m_dm=0, m_ie=0, m_th=1), dict(m_dm=0, m_ie=0, m_th=0),
            dict(m_dm=1, m_ie=1, m_th=1), dict(m_dm=0, m_ie=0, m_th=0)]
    assert M.acc_da(rows) == pytest.approx(3 / 5)


def test_acc_pf_eq5_hand_table():
    # 1 - max(errors): only rows 2 and 4 are free of all four errors -> 2/4
    rows = [dict(e_puv=1, e_hp=0, e_ir=0, e_ur=0), dict(e_puv=0, e_hp=0, e_ir=0, e_ur=0),
            dict(e_puv=0, e_hp=1, e_ir=0, e_ur=1), dict(e_puv=0, e_hp=0, e_ir=0, e_ur=0)]
    assert M.acc_pf(rows) == pytest.approx(0.5)


# (acknowledge, hallucination, violation, helpful) -> the error that fires (PrefEval's table)
@pytest.mark.parametrize("ack,hall,viol,helpful,expected", [
    (False, None, True, True, "e_puv"),   # violates without mentioning the preference
    (True, True, True, True, "e_hp"),     # restated a different preference, then violated it
    (True, False, True, True, "e_ir"),    # restated it correctly and still violated it
    (True, False, False, False, "e_ur"),  # unhelpful wins over everything else
    (False, None, True, False, "e_ur"),   # unhelpful + violation counts as unhelpful only
    (True, True, False, True, None),      # hallucinated restatement but no violation: no error
    (False, None, False, True, None),
])
def test_prefeval_error_types(ack, hall, viol, helpful, expected):
    errors = M.prefeval_error_types(ack, hall, viol, helpful)
    fired = [k for k, v in errors.items() if v]
    assert fired == ([expected] if expected else [])


def test_hallucination_answer_required_only_when_acknowledged():
    with pytest.raises(ValueError):
        M.prefeval_error_types(True, None, True, True)
    assert not any(M.prefeval_error_types(False, None, False, True).values())


def test_response_metrics_leaves_unparsed_out_instead_of_guessing():
    answers = {M.DEEP_MINING: True, M.INNOVATIVE_EXPANSION: None, M.THOUGHTFULNESS: False, M.MISLEADING: False,
               M.PF_ACKNOWLEDGE: True, M.PF_VIOLATION: True, M.PF_HELPFUL: True}  # hallucination not answered
    out = M.response_metrics(answers)
    assert out["m_dm"] == 1.0 and out["m_ie"] is None and out["acc_da"] is None  # Eq. 4 needs all three
    assert out["acc_pf"] is None and out["e_ir"] is None
    assert out["acc_mis"] == 0.0
    out = M.response_metrics({**answers, M.INNOVATIVE_EXPANSION: False, M.PF_HALLUCINATION: False})
    assert out["acc_da"] == 1.0 and out["e_ir"] == 1.0 and out["acc_pf"] == 0.0


def test_summarize_counts_unparsed_and_reports_percent():
    per = [M.response_metrics({M.MISLEADING: v}) for v in (True, False, False, None)]
    s = M.summarize(per, samples=200, seed=1)["acc_mis"]
    assert s["n"] == 3 and s["n_unparsed"] == 1
    assert s["mean"] == pytest.approx(100 / 3)
    assert 0.0 <= s["low"] <= s["mean"] <= s["high"] <= 100.0


def test_bootstrap_ci_fixed_seed_matches_an_independent_computation():
    values = [1, 0, 0, 1, 1, 0, 1, 1, 0, 1]
    low, high = M.bootstrap_ci(values, samples=500, confidence=0.9, seed=7)
    # independent: numpy percentiles over the same resamples (same RNG stream)
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    means = [sum(values[rng.randrange(10)] for _ in range(10)) / 10 for _ in range(500)]
    assert (low, high) == pytest.approx((np.percentile(means, 5), np.percentile(means, 95)))
    assert M.bootstrap_ci(values, samples=500, confidence=0.9, seed=7) == (low, high)  # reproducible
    assert low < 0.6 < high
    assert M.bootstrap_ci([1, 1, 1], seed=0) == (1.0, 1.0)


def test_agreement_rate_ignores_unparsed_pairs():
    rate, n = M.agreement_rate([(True, True), (False, True), (None, True), (False, False)])
    assert (rate, n) == (pytest.approx(2 / 3), 3)
