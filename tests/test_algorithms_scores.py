"""Score parsing from a scoring model's own output: SCORE (step), FINAL SCORE (0-100), <answer> (judge)."""

from __future__ import annotations

import pytest

from cdra_ray.algorithms.scores import parse_final_score, parse_judge_answer, parse_step_score


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning: fine.\nSCORE: 0.8", 0.8),
        ("**Reasoning:** ok **SCORE:** 0.8<|im_end|>", 0.8),  # the paper code's prompt format
        ("**SCORE**: 0.8", 0.8),
        ("SCORE: [0.8]", 0.8),
        ("SCORE: (0.8)", 0.8),
        ("SCORE: **0.8**", 0.8),
        ("Score: .8", 0.8),
        ("score: -0.35", -0.35),
        ("SCORE: +0.5", 0.5),
        ("SCORE: \u22120.5", -0.5),  # Unicode minus
        ("score = 0.1", 0.1),
        ('{"score": 0.78}', 0.78),  # the paper's Fig. 16 annotation format
        ("SCORE:0.7", 0.7),
        ("SCORE: 0.8.", 0.8),  # sentence period
        ("SCORE:\n0.5", 0.5),  # one line break
        ("SCORE: 1", 1.0),
        ("SCORE: 1.", 1.0),
        ("SCORE: 2", 1.0),  # clamped to high = 1
        ("SCORE: -7.5", -1.0),  # clamped to low = -1
        ("SCORE: 0.2\nOn reflection... SCORE: 0.6", 0.6),  # the LAST well-formed score counts
        ("SCORE: 0.3 then SCORE: 0.8.5", 0.3),  # the last one is malformed -> skipped, the earlier one counts
        ("SCORE: 0.4 then SCORE: 80%", 0.4),
        ('FINAL "score": 0.3 ... SCORE: -0.2', -0.2),  # a FINAL before quotes on the same line is still FINAL
        ("FINAL\n\"score\": 0.3", 0.3),  # a line break ends the FINAL line: as parse_final_score reads it
        ("The plan is final\nSCORE: -0.7", -0.7),  # a critique ending in "final", then the forced score line
    ],
)
def test_step_score_variants(text, expected):
    assert parse_step_score(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "SCORE: 0.8.5",  # two decimal points
        "SCORE: 1e9",  # scientific notation is not well-formed (a broken judge, not a perfect score)
        "SCORE: 1E-3",
        "SCORE: 0x1",
        "SCORE: 0,8",
        "SCORE: 8/10",
        "SCORE: 0.8abc",
        "SCORE: [your_score]",  # template copied verbatim
        "SCORE: 0.7 - 0.89",  # a range, not a value
        "SCORE: nan",
        "SCORE: inf",
        "SCORE: 80%",  # a percentage is not a value on [-1, 1] (clamping 80 to 1.0 would reward a confused judge)
        "SCORE: 0.5 %",
        "SCORE: \u0660.\u0668",  # digits of another script (Arabic-Indic 0.8)
        "SCORE: \uff18",  # full-width 8
        "SCORE: 0.8\u0663",  # a digit of another script glued on
        "SCORE:\n\n0.5",  # two line breaks: not the score line anymore
        "PRESCORE: 0.5",
        "FINAL SCORE: 85",  # a holistic score is not a step score
        "**FINAL SCORE:** 85",
        "no score here",
        "",
    ],
)
def test_step_score_none_when_nothing_well_formed(text):
    assert parse_step_score(text) is None


def test_step_score_custom_range_and_first():
    assert parse_step_score("SCORE: 7", low=0.0, high=5.0) == 5.0
    assert parse_step_score("SCORE: 0.2 ... SCORE: 0.6", which="first") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="low"):
        parse_step_score("SCORE: 0.2", low=1.0, high=0.0)
    with pytest.raises(ValueError, match="which"):
        parse_step_score("SCORE: 0.2", which="middle")
    with pytest.raises(ValueError, match="text"):
        parse_step_score(None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Holistic Reasoning: ...\nFINAL SCORE: 85", 85.0),
        ("**FINAL SCORE:** [92]", 92.0),
        ("Final Score: 77.5", 77.5),
        ("FINAL SCORE: 85/100", 85.0),
        ("FINAL SCORE: 85 out of 100", 85.0),
        ("FINAL SCORE: 8.5/10", 85.0),  # 8.5 * 100 / 10
        ("final_score: 40", 40.0),
        ("FINAL SCORE: 120", 100.0),  # clamped
        ("FINAL SCORE: 10\nrevised FINAL SCORE: 70", 70.0),  # last
        ("FINAL SCORE: 85%", 85.0),  # the 0-100 scale is a percentage
        ("FINAL SCORE: 90 then FINAL SCORE: 85/1e3", 90.0),  # the malformed last one is skipped
    ],
)
def test_final_score_variants(text, expected):
    assert parse_final_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["FINAL SCORE: 1e3", "FINAL SCORE: 5/0", "FINAL SCORE: [0-100]", "SCORE: 85",
                                  "FINAL SCORE: 85.5.5", "",
                                  "FINAL SCORE: 85/1e3",  # a malformed denominator is skipped, not clamped to 100
                                  "FINAL SCORE: 85/", "FINAL SCORE: 85 out of ten", "FINAL SCORE: 85%/10"])
def test_final_score_none(text):
    assert parse_final_score(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<explanation>ok</explanation> <answer>Yes</answer>", True),
        ("<answer>No</answer>", False),
        ("<answer> yes </answer>", True),
        ("<ANSWER>\nNO\n</ANSWER>", False),
        ("<answer>[Yes]</answer>", True),
        ("<answer>Yes.</answer>", True),
        ("<explanation>x</explanation><answer>No", False),  # stop string "</answer>" removed by the engine
        ("<answer>No</answer> wait <answer>Yes</answer>", True),  # last
    ],
)
def test_judge_answer(text, expected):
    assert parse_judge_answer(text) is expected


@pytest.mark.parametrize("text", ["<answer>Yes/No</answer>", "<answer>Maybe</answer>", "Yes", "<answer>Yes because",
                                  "<answer></answer>", ""])
def test_judge_answer_none(text):
    assert parse_judge_answer(text) is None


def test_judge_answer_first():
    assert parse_judge_answer("<answer>No</answer><answer>Yes</answer>", which="first") is False
