"""Construction input: the DeepPref importer on the bundled hand-written sample, PrefEval raw files, bad input,
and resume (finished ids are skipped) without any model."""

import json

import pytest

from cdra_ray.config import load_config
from cdra_ray.construction.inputs import load_inputs
from cdra_ray.construction.outputs import finished_ids, read_trees
from cdra_ray.construction.records import d_rft_record
from cdra_ray.construction.run import run_construction
from cdra_ray.data.scenarios import SAMPLES_DIR, ScenarioDataError

SAMPLE = str(SAMPLES_DIR / "deeppref_format_sample.json")


def test_deeppref_sample_imports_its_tree():
    (first, tree), (second, none) = load_inputs(SAMPLE)
    assert first.uid == "deeppref_sample/hiking" and first.query.startswith("Can you suggest a day trip")
    assert second.preference == "I am saving for a house and track every expense." and none is None
    # node 2 is pruned; leaves 4 and 5 are answers -> thoughts 1, 2, 3 remain in the tree
    assert [(n["node_id"], n["parent"], n["depth"], n["pruned"]) for n in tree["nodes"]] == [
        (1, None, 1, False), (2, None, 1, True), (3, 1, 2, False)]
    assert [p["node_ids"] for p in tree["paths"]] == [[1, 3], [1]]
    deep, short = tree["paths"]
    assert deep["steps"][0].startswith("Step 1: They want an outing") and deep["steps"][2].startswith("Step 3: Take")
    assert deep["step_scores"] == [0.8, 0.7, 0.75] and deep["final_score"] == 82
    assert short["step_scores"] == [0.8, 0.5] and short["step_critiques"][1].startswith("A concrete answer")
    rft = d_rft_record(tree, "step_sum")
    assert rft["path_score"] == pytest.approx(2.25) and rft["rejected_score"] == pytest.approx(1.3)


def test_prefeval_raw_topic_file(tmp_path):
    path = tmp_path / "travel_hotel.json"
    path.write_text(json.dumps([{"preference": "No chains.", "question": "Where to stay in Lyon?", "explanation": "x"},
                                {"preference": "Quiet rooms.", "question": "Hotel in Tokyo?", "explanation": "y"}],
                               indent=1))
    items = load_inputs(str(path))
    assert [(s.uid, s.query, t) for s, t in items] == [("travel_hotel/0", "Where to stay in Lyon?", None),
                                                       ("travel_hotel/1", "Hotel in Tokyo?", None)]


@pytest.mark.parametrize("body, fmt, message", [
    ('[\n {"preference": "a", "question": "b"},\n {"preference": "a"}\n]', "prefeval", r":3: missing field 'question'"),
    ('[\n {"user_profile": "a", "initial_question": "b",\n  "thought_tree": {"0": {"children": [1]}, "1": '
     '{"thought": "t", "score": 3, "children": []}}}\n]', "deeppref", r":2: .*score must be a number in \[-1.0, 1.0\]"),
    ('{"user_profile": "a", "initial_question": "b", "thought_tree": {"0": {"children": [7]}}}\n', "deeppref",
     r":1: thought_tree node '0': child 7 is not a node"),
    ('{"preference": "a", "query": "b"}\n{"preference": "a", "query": ', "jsonl", r":2: invalid JSON"),
])
def test_bad_input_names_file_and_line(tmp_path, body, fmt, message):
    path = tmp_path / ("bad.jsonl" if body.startswith("{") else "bad.json")
    path.write_text(body)
    with pytest.raises(ScenarioDataError, match=message) as caught:
        load_inputs(str(path), fmt)
    assert str(path) in str(caught.value)


def test_bad_construct_key_is_named_before_any_model(tmp_path):
    from cdra_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"construct\.beam_width=0.*construct_tiny_test\.yaml"):
        load_config("construct_tiny_test", [f"construct.output_dir={tmp_path}", "construct.beam_width=0"])
    config = load_config("construct_tiny_test", [f"construct.output_dir={tmp_path}"])
    config.construct.beam_width = 0  # a config built in code is checked again when the stage starts
    with pytest.raises(ConfigError, match=r"construct\.beam_width=0"):
        run_construction(config)


def test_imported_trees_are_written_and_a_rerun_skips_finished_ids(tmp_path):
    data = tmp_path / "trees_only.json"
    records = json.loads(open(SAMPLE).read())[:1]
    records.append({**records[0], "id": "copy"})
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    config = load_config("construct_tiny_test", [f"construct.input={data}", f"construct.output_dir={out}"])
    run_construction(config)  # only imported trees: no model is loaded, Ray is never started
    assert finished_ids(out) == {"deeppref_sample/hiking", "copy"}
    before = (out / "trees.jsonl").read_text()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scenarios"] == 2 and stats["records"] == {"d_rea": 10, "d_rft": 2}
    # a torn last line (crash mid-write) is dropped and its scenario counts as unfinished
    (out / "trees.jsonl").write_text(before + '{"id": "torn", "nodes": [')
    assert finished_ids(out) == {"deeppref_sample/hiking", "copy"}
    run_construction(config)
    assert (out / "trees.jsonl").read_text() == before  # nothing rebuilt, nothing appended twice
    assert json.loads((out / "stats.json").read_text())["run"]["built_this_run"] == 0
    assert len((out / "d_rea.jsonl").read_text().splitlines()) == 10
    assert len(read_trees(out)) == 2
