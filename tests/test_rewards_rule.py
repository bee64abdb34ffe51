"""The ``rule`` reward: each step scored by the share of its characters in a target set (hand-computed cases)."""

from __future__ import annotations

import pytest

from cdra_ray.messages import Group, Sample, Scenario
from cdra_ray.rewards import REWARD_MODELS, create_reward_model
from cdra_ray.rewards.rule import RuleReward, target_share


def _group(texts, spans=None):
    samples = [Sample(response_text=t, response_token_ids=[1] * len(t), sampling_logprobs=[0.0] * len(t))
               for t in texts]
    return Group(scenario=Scenario("u", "P", "Q"), prompt_token_ids=[1], samples=samples, policy_version=0,
                 step_spans=spans or [])


def test_target_share_hand_cases():
    assert target_share("abcD", "abcdefghijklmnopqrstuvwxyz") == 0.75  # a, b, c of 4 characters
    assert target_share("12 x", "0123456789") == 0.5
    assert target_share("", "a") == 0.0


def test_steps_are_scored_separately_and_registry_builds_it():
    assert REWARD_MODELS["rule"] is RuleReward
    model = create_reward_model("rule", model_dir=None)
    text = "Step 1: ab\nStep 2: XY"  # spans (0, 11) and (11, 21)
    (out,) = model.score_groups([_group([text, "zz"], spans=[[(0, 11), (11, 21)], [(0, 2)]])])
    # step 1 "Step 1: ab\n": t, e, p, a, b = 5 lowercase of 11; step 2 "Step 2: XY": t, e, p = 3 of 10
    assert [[s.score for s in row] for row in out.step_scores] == [[pytest.approx(5 / 11), pytest.approx(0.3)], [1.0]]
    assert [(s.start, s.end) for s in out.step_scores[0]] == [(0, 11), (11, 21)]
    assert out.metrics.requests == 3 and out.metrics.parse_rate == 1.0


def test_without_spans_the_whole_response_is_one_step_and_target_is_an_option():
    (out,) = RuleReward(target_chars="x").score_groups([_group(["xxy", ""])])
    assert [[s.score for s in row] for row in out.step_scores] == [[pytest.approx(2 / 3)], [0.0]]
    with pytest.raises(ValueError, match="target_chars"):
        RuleReward(target_chars="")
