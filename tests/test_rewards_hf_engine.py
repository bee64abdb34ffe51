"""PersGenPRM on a real engine: a tiny random Llama (garbage critiques) through the transformers engine.

A random model never writes "SCORE: x" on its own, so free mode must fall back to the default for every step,
while the constrained score phase still reads a score from the model for every step (parse rate 1.0)."""

from __future__ import annotations

import re

import pytest

from cdra_ray.messages import Group, Sample, Scenario
from cdra_ray.rewards import PersGenPRM
from cdra_ray.rewards.pers_genprm import SCORE_REGEX

pytestmark = pytest.mark.slow

RESPONSES = [
    "Step 1: The user avoids sugar, likely for health.\nStep 2: Suggest baked apples with cinnamon.",
    "Step 1: The user avoids sugar, likely for health.\nStep 2: Suggest a chocolate cake.\nStep 3: Enjoy!",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from cdra_ray.engines.hf_engine import HFEngine
    from cdra_ray.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny_judge"), hidden=64, heads=2, seed=3)
    return HFEngine(model_dir, seed=0)


def _group():
    return Group(
        scenario=Scenario(uid="s0", preference="I avoid sugar.", query="Suggest a dessert."),
        prompt_token_ids=[0],
        samples=[Sample(response_text=t, response_token_ids=[1], sampling_logprobs=[0.0]) for t in RESPONSES],
        policy_version=0,
    )


def test_constrained_scores_always_parse_on_a_random_model(engine):
    model = PersGenPRM(engine, critique_max_tokens=12, min_requests_for_floor=1)
    out = model.score_groups([_group()])[0]
    # 2 + 3 steps; step 1 is identical in both responses -> 4 generated, 1 deduplicated
    assert [len(r) for r in out.step_scores] == [2, 3]
    m = out.metrics
    assert (m.requests, m.deduplicated, m.generated) == (5, 1, 4)
    assert m.parse_rate == 1.0 and m.parsed_constrained == 4 and m.defaulted == 0
    for resp in out.step_scores:
        for s in resp:
            assert s.parsed and -1.0 <= s.score <= 1.0
    # the scores are what the regex admits, e.g. -0.35 or 1.0, read back exactly
    assert all(re.fullmatch(SCORE_REGEX, f" {s.score:g}") for r in out.step_scores for s in r)


def test_free_mode_on_a_random_model_defaults_and_trips_the_floor(engine):
    from cdra_ray.rewards import RewardParseError

    model = PersGenPRM(engine, score_mode="free", critique_max_tokens=8, min_requests_for_floor=4)
    with pytest.raises(RewardParseError, match=r"parse rate 0\.0%") as err:
        model.score_groups([_group()])
    out = err.value.outputs[0]
    assert (out.metrics.generated, out.metrics.defaulted, out.metrics.retried) == (4, 4, 4)
    assert all(not s.parsed and s.score == 0.0 for r in out.step_scores for s in r)
