"""The report from judgments: per-method rows computed from judgments.jsonl records (hand-made), the step-format
statistics, the Table 1 markdown/CSV shape, the radar's axes, the resume plan of the judge."""

from __future__ import annotations

import csv
import io

import pytest

from cdra_ray.evaluation import metrics as M
from cdra_ray.evaluation.grading import judgment_key, plan_requests, response_values
from cdra_ray.evaluation.report import format_stats, method_rows, radar_values, to_csv, to_markdown

JUDGE = "fake-judge"


def _response(method, sid, text):
    return {"method": method, "scenario_id": sid, "topic": "t", "model": "m", "preference": "P" + sid,
            "query": "Q" + sid, "response": text}


def _judge(judged, record, answers, quote="since you like P"):
    values = response_values(record)
    for q, a in answers.items():
        if q == M.PF_HALLUCINATION:
            continue
        key = judgment_key(JUDGE, q, values)
        judged[key] = {"key": key, "question": q, "answer": a, "parsed": a is not None,
                       "explanation": quote if q == M.PF_ACKNOWLEDGE else "e", "attempts": 1}
    if answers.get(M.PF_ACKNOWLEDGE) == "Yes":
        hv = {"preference": record["preference"], "restatement": quote}
        key = judgment_key(JUDGE, M.PF_HALLUCINATION, hv)
        judged[key] = {"key": key, "question": M.PF_HALLUCINATION, "answer": answers[M.PF_HALLUCINATION],
                       "parsed": True, "explanation": "e", "attempts": 1}


def test_format_stats():
    stats = format_stats(["Step 1: a\nStep 2: b\nStep 3: c", "just an answer", "Step 1: only one"])
    assert stats["steps_mean"] == pytest.approx((3 + 1 + 1) / 3)
    assert stats["step_format"] == pytest.approx(100 / 3)


def test_rows_from_judgments_match_hand_computation():
    a = _response("cot", "1", "Step 1: x\nStep 2: y")
    b = _response("cot", "2", "plain")
    judged = {}
    # a: m_dm Yes -> DA; acknowledged, restated correctly, violated -> e_ir; misleading No
    _judge(judged, a, {M.DEEP_MINING: "Yes", M.INNOVATIVE_EXPANSION: "No", M.THOUGHTFULNESS: "No",
                       M.MISLEADING: "No", M.PF_ACKNOWLEDGE: "Yes", M.PF_HALLUCINATION: "No",
                       M.PF_VIOLATION: "Yes", M.PF_HELPFUL: "Yes"})
    # b: nothing deep; not acknowledged, no violation, helpful -> PF correct; misleading unparsed
    _judge(judged, b, {M.DEEP_MINING: "No", M.INNOVATIVE_EXPANSION: "No", M.THOUGHTFULNESS: "No",
                       M.MISLEADING: None, M.PF_ACKNOWLEDGE: "No", M.PF_VIOLATION: "No", M.PF_HELPFUL: "Yes"})
    [row] = method_rows([a, b], judged, JUDGE, ["cot"], samples=50, confidence=0.95, seed=0)
    m = row["metrics"]
    assert m["acc_da"]["mean"] == 50.0 and m["m_dm"]["mean"] == 50.0 and m["m_ie"]["mean"] == 0.0
    assert m["e_ir"]["mean"] == 50.0 and m["acc_pf"]["mean"] == 50.0 and m["e_puv"]["mean"] == 0.0
    assert (m["acc_mis"]["mean"], m["acc_mis"]["n"], m["acc_mis"]["n_unparsed"]) == (0.0, 1, 1)
    assert row["step_format"] == 50.0
    md = to_markdown([row])
    assert md.splitlines()[0].startswith("| method | N | Acc_PF ↑ | Acc_DA ↑ | Acc_Mis ↓ | m_th ↑ | m_dm ↑ | m_ie ↑")
    assert "0.0 [0.0, 0.0] (n=1)" in md  # the unparsed answer is reported, not folded in
    table = list(csv.DictReader(io.StringIO(to_csv([row]))))
    assert table[0]["acc_da"] == "50.0" and table[0]["acc_mis_n"] == "1"
    assert radar_values(row) == [50.0, 50.0, 100.0, 0.0, 50.0, 0.0]  # Acc_Mis inverted


def test_plan_asks_only_what_is_missing_and_hallucination_after_acknowledgement():
    r = _response("cot", "1", "text")
    first, second = plan_requests([r], {}, JUDGE)
    assert sorted(q for _, q, _, _ in first) == sorted(q for q in M.QUESTIONS if q != M.PF_HALLUCINATION)
    assert second == []
    judged = {}
    _judge(judged, r, {q: "Yes" for q in M.QUESTIONS})
    del judged[judgment_key(JUDGE, M.PF_HALLUCINATION, {"preference": "P1", "restatement": "since you like P"})]
    first, second = plan_requests([r], judged, JUDGE)
    assert first == [] and [(q, v["restatement"]) for _, q, v, _ in second] == [
        (M.PF_HALLUCINATION, "since you like P")]


def test_identical_responses_are_judged_once():
    a, b = _response("zero_shot", "1", "same text"), _response("few_shot", "1", "same text")
    first, _ = plan_requests([a, b], {}, JUDGE)
    assert len(first) == 7  # the key is (judge, question, texts shown): the method does not change the question
