"""Messages are values: every stage returns a new group and leaves the one it was given untouched."""

import dataclasses

import pytest
import torch

from cdra_ray.messages import Group, Sample, Scenario, StepScore
from cdra_ray.rewards.base import RewardOutput, outcome_step_score


def _group() -> Group:
    text = "Step 1: a. Step 2: b."
    return Group(Scenario("u", "p", "q"), [1, 2], [Sample(text, [3, 4, 5], [-0.1, -0.2, -0.3])], policy_version=2,
                 step_spans=[[(0, 11), (11, len(text))]], token_steps=[[0, 1, 1]], timings={"generate": 0.5})


def test_messages_are_frozen():
    group = _group()
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.policy_version = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.samples[0].response_text = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        StepScore(0, 1, 0.5).score = 1.0


def test_outcome_scores_reindex_token_steps_on_a_new_group_only():
    group = _group()
    text = group.samples[0].response_text
    scored = RewardOutput([[outcome_step_score(text, 0.75)]]).attach(group)
    # one scored span per response: every token points at span 0 of step_scores ...
    assert scored.token_steps == [[0, 0, 0]] and scored.step_scores[0][0].score == 0.75
    # ... while the segmenter's steps and the input group are as they were
    assert scored.step_spans == group.step_spans
    assert group.token_steps == [[0, 1, 1]] and group.step_scores == []


def test_process_scores_keep_the_step_index_and_timings_accumulate():
    group = _group()
    spans = group.step_spans[0]
    scored = RewardOutput([[StepScore(a, b, 0.1 * k) for k, (a, b) in enumerate(spans)]]).attach(group)
    assert scored.token_steps == [[0, 1, 1]]
    timed = scored.with_timing("reward", 0.25)
    assert timed.timings == {"generate": 0.5, "reward": 0.25} and scored.timings == {"generate": 0.5}
    annotated = timed.with_ref_logprobs(torch.tensor([[-1.0, -2.0, -3.0]]))
    assert timed.ref_logprobs is None and annotated.ref_logprobs.shape == (1, 3)
