"""The pure helpers of benchmarks/common.py and bench_end_to_end.py on hand-made numbers (no timing, no models)."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
_spec = importlib.util.spec_from_file_location("bench_common", _PATH)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_median_odd_even_and_nan_ignored():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 3.0, 2.0]) == 2.5  # (2 + 3) / 2
    assert common.median([5.0, float("nan"), 1.0]) == 3.0  # NaN dropped: median of [5, 1] = 3
    assert math.isnan(common.median([]))


def test_ratio_and_target_status():
    assert common.ratio(3.0, 2.0) == 1.5
    assert math.isnan(common.ratio(1.0, 0.0))
    assert common.target_status(1.5, 1.5) == "met"  # the target itself counts as met
    assert common.target_status(1.49, 1.5) == "missed"
    assert common.target_status(0.8, 1.0, higher_is_better=False) == "met"
    assert common.target_status(float("nan"), 1.0) == "n/a"


def test_format_table_aligns_numbers_right_and_text_left():
    table = common.format_table(["name", "tok/s"], [["bare", 133.0], ["actor", 7.5]], title="T")
    lines = table.splitlines()
    assert lines[0] == "T"
    assert lines[1] == "name   tok/s"
    assert lines[2] == "-----  -----"
    assert lines[3] == "bare   133.0"  # >= 100: one decimal
    assert lines[4] == "actor  7.500"  # < 10: three decimals
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        common.format_table(["a", "b"], [["x"]])


def test_format_table_missing_values_show_as_dash():
    table = common.format_table(["x", "y"], [[None, float("nan")]])
    assert table.splitlines()[-1].split() == ["-", "-"]


def test_json_line_is_one_strict_json_object_with_nan_as_null():
    line = common.json_line("rollout", {"tok_s": 12.5, "ratio": float("nan"), "runs": [1.0, float("inf")]})
    assert "\n" not in line
    obj = json.loads(line)
    assert obj == {"benchmark": "rollout", "tok_s": 12.5, "ratio": None, "runs": [1.0, None]}
    assert list(obj)[0] == "benchmark"


def test_argv_of_round_trips_flags_for_a_child_process():
    ns = argparse.Namespace(group_size=5, beta=0.05, gradient_checkpointing=True, fast=False, model=None,
                            _child="x", variants="trl")
    assert common.argv_of(ns, exclude=("variants", "_child")) == [
        "--group-size", "5", "--beta", "0.05", "--gradient-checkpointing"]


def test_intervals_are_seconds_between_consecutive_update_ends():
    # start 10.0, ends 12.5, 13.0, 16.0 -> 2.5, 0.5, 3.0 (by hand)
    assert common.intervals(10.0, [12.5, 13.0, 16.0]) == [2.5, 0.5, 3.0]
    assert common.intervals(1.0, []) == []


def test_end_to_end_ratio_per_round_uses_that_rounds_faster_trl():
    """Round by round: the faster TRL run of the round over the cdra_ray run's median s/update (warm-up cut)."""
    import sys

    sys.path.insert(0, str(_PATH.parent))
    e2e = importlib.import_module("bench_end_to_end")
    runs = {"trl": [{"seconds": [9, 20, 22, 24]}, {"seconds": [9, 30, 30, 30]}],
            "trl:malloc": [{"seconds": [9, 18, 18, 18]}, {"seconds": [9, 33, 33, 33]}],
            "sync": [{"seconds": [50, 9, 9, 9]}, {"seconds": [50, 10, 12, 10]}]}
    # round 1: min(22, 18) / 9 = 2.0; round 2: min(30, 33) / 10 = 3.0 (the 50 s warm-ups are not counted)
    assert e2e.per_round_ratios(runs, slice(1, None)) == {"sync": [2.0, 3.0]}
