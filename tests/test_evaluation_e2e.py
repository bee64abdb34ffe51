"""End to end: five pairs, the tiny model as policy (vLLM, its own process) and as judge (transformers), three
prompting baselines; every report file with its schema; a rerun reuses every response and judgment."""

from __future__ import annotations

import csv
import json

import pytest

from cdra_ray.config import load_config
from cdra_ray.evaluation import metrics as M
from cdra_ray.evaluation.run import run_evaluation

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_evaluate_five_pairs_writes_every_report_file(tmp_path):
    run = tmp_path / "train_run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"update": u, "reward/step_mean": 0.1 * u, "learner/kl_mean": 0.01 * u, "advantage/zero_rate": 0.5,
         "reward/parse_rate": 1.0}) + "\n" for u in (1, 2, 3)), encoding="utf-8")
    out = tmp_path / "eval"
    config = load_config("tiny_test", [
        f"evaluate.output_dir={out}", "evaluate.max_scenarios=5", "evaluate.judge.model=tiny-llama",
        "evaluate.judge.engine=hf", "evaluate.max_new_tokens=16", "evaluate.judge.max_new_tokens=8",
        "evaluate.judge.agreement_samples=3", "evaluate.bootstrap_samples=100", "evaluate.progress_bar=false",
        f"evaluate.training_runs=[{run}]"])
    result = run_evaluation(config)

    for name in ("table.md", "table.csv", "topics.md", "topics.csv", "radar.png", "curves.png", "summary.json",
                 "judgments.jsonl", "responses.jsonl", "agreement.jsonl", "config.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    responses = _lines(out / "responses.jsonl")
    assert len(responses) == 15 and {r["method"] for r in responses} == {"zero_shot", "few_shot", "cot"}
    judgments = _lines(out / "judgments.jsonl")
    acknowledged = sum(j["question"] == M.PF_ACKNOWLEDGE and j["answer"] == "Yes" for j in judgments)
    assert len(judgments) == 15 * 7 + acknowledged  # seven questions each + a hallucination check per "Yes"
    for j in judgments:
        assert {"key", "method", "scenario_id", "topic", "question", "answer", "parsed", "explanation", "raw",
                "attempts"} <= set(j)
        assert j["answer"] in ("Yes", "No", None) and j["parsed"] == (j["answer"] is not None)
    assert len(_lines(out / "agreement.jsonl")) == 3

    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == ["zero_shot", "few_shot", "cot"]
    for r in rows:
        assert r["n"] == "5" and 0.0 <= float(r["step_format"]) <= 100.0
        for metric in M.ALL_METRICS:  # the tiny judge's answers are forced to Yes/No: every metric is defined
            assert float(r[f"{metric}_low"]) <= float(r[metric]) <= float(r[f"{metric}_high"])
    md = (out / "table.md").read_text()
    assert "Acc_PF" in md and "Acc_DA" in md and "Acc_Mis" in md and "self-agreement" in md
    topics = list(csv.DictReader((out / "topics.csv").open()))
    assert sum(int(t["n"]) for t in topics) == 15 and all(t["topic"] for t in topics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"]["judgments"] == len(judgments) and summary["scenarios"] == 5
    assert result["judge"]["unparsed"] == 0

    # a rerun reuses every response and judgment: nothing is generated or asked again
    before = {p: (out / p).stat().st_mtime_ns for p in ("responses.jsonl", "judgments.jsonl", "agreement.jsonl")}
    table = (out / "table.csv").read_text()
    run_evaluation(config)
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before
    assert (out / "table.csv").read_text() == table  # same judgments, same seed: the same table


def test_judge_over_an_openai_endpoint_unreadable_answers_are_reported_not_folded(tmp_path):
    """The judge behind an OpenAI-compatible endpoint (a scripted loopback server): every question answered
    Yes, except the misleading-risk question, which always gets an unreadable reply: it is retried once, then
    left out of Acc_Mis (n/a, counted) while every other metric is computed."""
    from fake_openai_server import FakeOpenAIServer, completion_reply

    def respond(request):
        prompt = request.body["prompt"]
        if "risk misleading" in prompt:
            return completion_reply(["I would rather not say."])
        return completion_reply(["Looks fine.</explanation>\n<answer>Yes</answer>"])

    out = tmp_path / "eval"
    with FakeOpenAIServer(respond) as server:
        config = load_config("tiny_test", [
            f"evaluate.output_dir={out}", "evaluate.max_scenarios=3", "evaluate.engine=hf",
            "evaluate.methods=[{name: cot, kind: cot}]", "evaluate.max_new_tokens=8",
            "evaluate.judge.engine=openai", f"evaluate.judge.base_url={server.base_url}",
            "evaluate.judge.served_model=judge", "evaluate.judge.model=tiny-llama", "evaluate.judge.constrained=false",
            "evaluate.judge.agreement_samples=2", "evaluate.bootstrap_samples=50", "evaluate.progress_bar=false"])
        result = run_evaluation(config)
        asked = len(server.requests)
    [row] = result["rows"]
    assert row["metrics"]["acc_mis"]["mean"] is None and row["metrics"]["acc_mis"]["n_unparsed"] == 3
    assert row["metrics"]["acc_da"]["mean"] == 100.0 and row["metrics"]["m_ie"]["mean"] == 100.0
    # acknowledged, restated a different preference ("Yes" to hallucination), violated, helpful -> e_hp
    assert row["metrics"]["e_hp"]["mean"] == 100.0 and row["metrics"]["acc_pf"]["mean"] == 0.0
    judgments = _lines(out / "judgments.jsonl")
    misleading = [j for j in judgments if j["question"] == M.MISLEADING]
    assert len(misleading) == 3 and all(j["answer"] is None and j["attempts"] == 2 for j in misleading)
    assert result["judge"]["unparsed"] == 3 and result["judge"]["retried"] == 3
    # 3 responses x 7 questions + 3 hallucination checks + 3 retries + 2 agreement re-asks
    assert asked == 3 * 7 + 3 + 3 + 2
    assert "(n=0)" in (out / "table.md").read_text() or "n/a" in (out / "table.md").read_text()
