"""Prompting baselines: few-shot demonstrations never come from the evaluated split; the formats per method."""

from __future__ import annotations

import json

import pytest

from cdra_ray.config import load_config
from cdra_ray.data.prompts import INSTRUCTIONS
from cdra_ray.data.scenarios import ScenarioDataError, load_scenarios
from cdra_ray.evaluation.baselines import check_demos_disjoint, load_demos, method_messages, pick_demos
from cdra_ray.evaluation.run import build_jobs, topic_of


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_builtin_demos_are_disjoint_from_the_bundled_prefeval_sample():
    demos = load_demos("builtin:eval_demos")
    assert len(demos) >= 2
    check_demos_disjoint(demos, load_scenarios("builtin:prefeval_sample"), "builtin:eval_demos")


def test_demos_that_are_evaluated_scenarios_are_refused_by_id_or_by_text(tmp_path):
    evaluated = load_scenarios("builtin:prefeval_sample", 5)
    s = evaluated[2]
    by_id = _write(tmp_path / "a.jsonl", [{"id": s.uid, "preference": "other", "query": "other", "response": "r"}])
    by_text = _write(tmp_path / "b.jsonl", [{"id": "renamed", "preference": "  " + s.preference.upper(),
                                             "query": s.query, "response": "r"}])
    for path in (by_id, by_text):
        with pytest.raises(ScenarioDataError, match="never evaluated"):
            check_demos_disjoint(load_demos(path), evaluated, path)


def test_build_jobs_checks_disjointness_before_any_model_loads(tmp_path):
    data = load_scenarios("builtin:prefeval_sample", 4)
    clash = _write(tmp_path / "demos.jsonl", [
        {"id": "d1", "preference": "p1", "query": "q1", "response": "r1"},
        {"id": data[0].uid, "preference": data[0].preference, "query": data[0].query, "response": "r"}])
    config = load_config("tiny_test", ["evaluate.max_scenarios=4", f"evaluate.demo_data={clash}",
                                       "evaluate.few_shot_k=1", "model.policy=/nonexistent/model"])
    with pytest.raises(ScenarioDataError, match="never evaluated"):
        build_jobs(config)  # raised before /nonexistent/model is looked at


def test_few_shot_jobs_use_k_seeded_demos_from_outside_the_evaluated_split(tmp_path):
    config = load_config("tiny_test", ["evaluate.max_scenarios=6", "evaluate.few_shot_k=2",
                                       "evaluate.methods=[{name: fs, kind: few_shot}]"])
    jobs, info = build_jobs(config)
    evaluated = {j.scenario_id for j in jobs}
    assert len(jobs) == 6 and info["scenarios"] == 6
    for job in jobs:
        assert len(job.demos) == 2 and not {d[0] for d in job.demos} & evaluated
    again, _ = build_jobs(config)
    assert [j.demos for j in again] == [j.demos for j in jobs]  # seeded
    demos = load_demos("builtin:eval_demos")
    assert pick_demos(demos, 2, 0, "x") == pick_demos(demos, 2, 0, "x")
    with pytest.raises(ScenarioDataError):
        pick_demos(demos, len(demos) + 1, 0, "x")


def test_method_formats():
    s = load_scenarios("builtin:prefeval_sample", 1)[0]
    demos = load_demos("builtin:eval_demos")[:2]
    zero = method_messages("zero_shot", s)
    few = method_messages("few_shot", s, demos)
    cot = method_messages("cot", s)
    assert len(zero) == 2 and INSTRUCTIONS not in zero[-1]["content"] and s.preference in zero[-1]["content"]
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert few[-1] == zero[-1] and few[2]["content"] == demos[0].response
    assert INSTRUCTIONS in cot[-1]["content"] and method_messages("policy", s) == cot


def test_topic_from_field_or_id():
    assert topic_of("prefeval/travel_hotel/003", {}) == "travel_hotel"
    assert topic_of("x", {"x": "t"}) == "t" and topic_of("plain", {}) == "all"


@pytest.mark.parametrize("override,key", [
    ("evaluate.methods=[{name: a, kind: sft}]", "evaluate.methods[0].kind"),
    ("evaluate.methods=[{name: a, kind: cot}, {name: a, kind: cot}]", "evaluate.methods[1].name"),
    ("evaluate.judge.engine=openai", "evaluate.judge.base_url"),
    ("evaluate.judge.dtype=int8", "evaluate.judge"),
    ("evaluate.engine=openai", "evaluate.engine"),
    ("evaluate.confidence=1.5", "evaluate.confidence"),
])
def test_bad_evaluation_settings_name_the_key(override, key):
    from cdra_ray.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny_test", [override])


def test_evaluate_without_a_judge_is_a_clear_error_before_any_model_loads(capsys):
    from cdra_ray.cli import main

    assert main(["evaluate", "--config", "tiny_test", "model.policy=/nonexistent"]) == 2
    assert "evaluate.judge.model is not set" in capsys.readouterr().err
