"""Scenario files: every bad line is reported with file and line before any model loads."""

import json
from pathlib import Path

import pytest

from cdra_ray.data.prompts import inference_messages
from cdra_ray.data.scenarios import ScenarioDataError, ScenarioOrder, load_scenarios


def _write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"preference": "I avoid caffeine.", "query": "Suggest a drink."}).encode()


def test_bundled_sample_loads_with_unique_ids():
    scenarios = load_scenarios("builtin:prefeval_sample")
    assert len(scenarios) == 100
    assert len({s.uid for s in scenarios}) == 100
    assert all(s.preference and s.query for s in scenarios)
    assert [s.index for s in scenarios] == list(range(100))


def test_deeppref_field_names_are_accepted(tmp_path):
    path = _write(tmp_path, [json.dumps({"user_profile": "P", "initial_question": "Q"}).encode()])
    (scenario,) = load_scenarios(path)
    assert (scenario.preference, scenario.query, scenario.uid) == ("P", "Q", "data/1")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        (json.dumps({"query": "q"}).encode(), "missing field 'preference'"),
        (json.dumps({"preference": "  ", "query": "q"}).encode(), "field 'preference' is empty"),
        (json.dumps({"preference": "p", "query": ""}).encode(), "field 'query' is empty"),
        (json.dumps({"preference": "p", "query": 3}).encode(), "must be a string"),
        (b'{"preference": "p", "query": ', "invalid JSON"),
        (b'["p", "q"]', "expected a JSON object"),
        ('{"preference": "caf\u00e9", "query": "q"}'.encode("latin-1"), "not valid UTF-8"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path, [GOOD, b"", bad_line])
    with pytest.raises(ScenarioDataError) as err:
        load_scenarios(path)
    assert f"{path}:3" in str(err.value)
    assert message in str(err.value)


def test_duplicate_ids_are_rejected(tmp_path):
    line = json.dumps({"id": "a", "preference": "p", "query": "q"}).encode()
    with pytest.raises(ScenarioDataError, match="duplicate id 'a'.*line 1"):
        load_scenarios(_write(tmp_path, [line, line]))


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(ScenarioDataError, match="file not found"):
        load_scenarios(tmp_path / "nope.jsonl")
    with pytest.raises(ScenarioDataError, match="prefeval_sample"):
        load_scenarios("builtin:nope")


def test_order_is_a_reproducible_permutation_per_epoch():
    scenarios = load_scenarios("builtin:prefeval_sample", max_scenarios=10)
    order = ScenarioOrder(scenarios, seed=3)
    first_epoch = [order.next().index for _ in range(10)]
    second_epoch = [order.next().index for _ in range(10)]
    assert sorted(first_epoch) == list(range(10)) and sorted(second_epoch) == list(range(10))
    assert first_epoch != list(range(10))  # shuffled (probability 1/10! of a false failure)
    resumed = ScenarioOrder(scenarios, seed=3, consumed=13)
    assert [resumed.next().index for _ in range(7)] == second_epoch[3:]


def test_prompt_carries_preference_query_and_step_format():
    (scenario,) = load_scenarios("builtin:prefeval_sample", max_scenarios=1)
    text = " ".join(m["content"] for m in inference_messages(scenario))
    assert scenario.preference in text and scenario.query in text and "Step 1:" in text
