"""Construction's model backend on a scripted engine: one retry then "unusable", the forced score line, the
reward service's step-critique prompt, and reply clean-up."""

import re

import pytest

from cdra_ray.config.construct import Persona
from cdra_ray.construction.backend import BackendSettings, ModelBackend, ProposeRequest, clean_thought, strip_score_line
from cdra_ray.engines.base import Completion
from cdra_ray.messages import Scenario
from cdra_ray.models.tiny import train_tiny_tokenizer
from cdra_ray.rewards.judge import SCORE_REGEX
from cdra_ray.rewards.prompts import render_step_critique_prompt

SCENARIO = Scenario(uid="x", preference="I prefer short answers.", query="How does a loan work?")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer()


class ScriptedEngine:
    """Free generations come from ``script(call_index, settings)``; regex (score) phases answer ``score``."""

    def __init__(self, tokenizer, script, score=" 0.5"):
        self.tokenizer, self.script, self.score = tokenizer, script, score
        self.calls = []

    def generate(self, prompts, settings):
        self.calls.append((list(prompts), settings))
        if settings.regex is not None:
            assert re.fullmatch(settings.regex, self.score)
            return [[Completion(self.score, [1], [0.0], "stop")] for _ in prompts]
        text, finish = self.script(len(self.calls) - 1, settings)
        return [[Completion(text=text, token_ids=[1, 2], logprobs=[0.0, 0.0], finish_reason=finish)]
                for _ in prompts]


def backend_with(tokenizer, script, score=" 0.5", **settings):
    engine = ScriptedEngine(tokenizer, script, score)
    return ModelBackend(engine, engine, BackendSettings(**settings)), engine


def test_an_empty_thought_is_retried_once_with_sampling_then_unusable(tokenizer):
    backend, engine = backend_with(tokenizer, lambda k, s: ("", "stop"), temperature=0.0, retry_temperature=0.7)
    out = backend.propose(SCENARIO, [ProposeRequest(Persona("A", "r"), ())])
    assert out == [None]
    assert [c[1].temperature for c in engine.calls] == [0.0, 0.7]  # the retry samples, seeded
    assert engine.calls[1][1].seed == 1
    assert backend.usage["thought_unusable"] == 1 and backend.usage["thought_retried"] == 1


def test_a_retry_that_works_is_used(tokenizer):
    backend, _ = backend_with(tokenizer, lambda k, s: ("", "stop") if k == 0 else ("They value clarity.", "stop"))
    out = backend.propose(SCENARIO, [ProposeRequest(Persona("A", "r"), ("earlier thought",))])
    assert out == ["They value clarity."] and backend.usage["thought_unusable"] == 0


def test_step_critiques_use_the_reward_service_prompt_and_forced_score(tokenizer):
    backend, engine = backend_with(tokenizer, lambda k, s: ("The step fits the user.", "stop"), score=" -0.35")
    steps = ["Step 1: They want brevity.", "Step 2: Explain a loan in two sentences."]
    (judgement,) = backend.critique_steps(SCENARIO, [steps])
    assert judgement.score == pytest.approx(-0.35) and judgement.critique == "The step fits the user."
    critique_prompts, critique_settings = engine.calls[0]
    assert critique_prompts == [render_step_critique_prompt(tokenizer, SCENARIO.preference, SCENARIO.query, steps)]
    assert critique_settings.stop == ("SCORE",)
    assert engine.calls[1][1].regex == SCORE_REGEX
    assert backend.usage["step_route_constrained"] == 1


def test_final_scores_come_back_on_the_0_100_scale(tokenizer):
    backend, _ = backend_with(tokenizer, lambda k, s: ("reasoning 25/30, discovery 30/40, answer 25/30", "stop"),
                              score=" 80")
    (judgement,) = backend.judge_finals(SCENARIO, [(["t1"], "the answer")])
    assert judgement.score == pytest.approx(80.0)


def test_an_empty_critique_is_retried_then_unusable(tokenizer):
    backend, engine = backend_with(tokenizer, lambda k, s: ("", "stop"))
    (judgement,) = backend.judge_values(SCENARIO, [([], "a thought")])
    assert judgement is None
    assert backend.usage["value_unusable"] == 1 and backend.usage["value_retried"] == 1
    assert engine.calls[-2][1].temperature == pytest.approx(0.7)  # the retry judge's critique phase samples


@pytest.mark.parametrize("text, finish, mode, expected", [
    ("Step 2: They value quiet.\nMore here.", "stop", "trim", "They value quiet. More here."),
    ("**Hypothesis:** They value quiet time", "stop", "trim", "They value quiet time"),
    ("They value quiet. And they also want to", "length", "trim", "They value quiet."),
    ("They value quiet and also want to", "length", "trim", None),
    ("They value quiet and also want to", "length", "keep", "They value quiet and also want to"),
    ("They value quiet.", "length", "reject", None),
    ("  ", "stop", "trim", None),
])
def test_clean_thought(text, finish, mode, expected):
    assert clean_thought(text, finish, mode) == expected


def test_strip_score_line():
    assert strip_score_line("Good leap, plausible.\n**SCORE:** 0.7") == "Good leap, plausible."
    assert strip_score_line("no score here") == "no score here"


def test_engine_server_batches_concurrent_calls_per_settings_and_returns_each_its_own(tokenizer):
    import threading

    from cdra_ray.construction.engines import EngineServer
    from cdra_ray.engines.base import SamplingSettings

    class Echo:
        def __init__(self):
            self.batches = []

        def generate(self, prompts, settings):
            self.batches.append((len(prompts), settings.max_new_tokens))
            return [[Completion(text=f"{p[0]}/{settings.max_new_tokens}", token_ids=[], logprobs=[],
                                finish_reason="stop")] for p in prompts]

    calls = [([[1], [2]], 5), ([[3]], 5), ([[4]], 7), ([[5], [6]], 5)]
    expected = {0: ["1/5", "2/5"], 1: ["3/5"], 2: ["4/7"], 3: ["5/5", "6/5"]}
    for max_batch in (256, 1):
        engine = Echo()
        server = EngineServer(engine, max_wait_s=0.05, max_batch=max_batch)
        results = {}

        def call(k, prompts, tokens):
            results[k] = server.generate(prompts, SamplingSettings(max_new_tokens=tokens))

        threads = [threading.Thread(target=call, args=(k, p, t)) for k, (p, t) in enumerate(calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {k: [c[0].text for c in r] for k, r in results.items()} == expected
        if max_batch == 1:  # one scenario's requests per engine call, whatever arrives together
            assert sorted(engine.batches) == [(1, 5), (1, 7), (2, 5), (2, 5)]
    # one batch of all four calls: one engine call per distinct settings, each caller gets its own completions
    engine = Echo()
    out = EngineServer(engine)._run([(p, SamplingSettings(max_new_tokens=t)) for p, t in calls])
    assert engine.batches == [(5, 5), (1, 7)]
    assert {k: [c[0].text for c in r] for k, r in enumerate(out)} == expected
