"""reward.score_pass without a model: the streamed readout builds the same score prompts and reads the same scores
as the separate pass, engines without ``generate_continued`` fall back to the separate pass, bad values are refused."""

import pytest
from test_rewards_pers_genprm import ScriptedEngine, make_group  # tests/ is on sys.path (rootdir-relative)

from cdra_ray.config import ConfigError, load_config
from cdra_ray.rewards import PersGenPRM


class ContinuingEngine(ScriptedEngine):
    """ScriptedEngine with the two-phase call: the follow-up prompts are recorded, then generated one by one."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.follow_ups: list[str] = []

    def generate_continued(self, prompts, first, follow_up, second):
        self.calls.append(("continued", first, []))
        firsts = self.generate(prompts, first)
        seconds = []
        for i, completions in enumerate(firsts):
            row = []
            for c in completions:
                ids = follow_up(i, c)
                self.follow_ups.append(self.tokenizer.decode(ids))
                row.append(self.generate([ids], second)[0][0])
            seconds.append(row)
        return firsts, seconds


def _groups():
    return [make_group("g0", ["Step 1: no sugar.\nStep 2: baked apples.", "Step 1: no sugar.\nStep 2: cake!"],
                       None)]


def _score(text):
    # the forced score depends on what the prompt holds: a different score per step
    return " -0.5" if "cake" in text else " 0.75"


def test_streamed_reads_the_same_scores_from_the_same_score_prompts():
    separate = ContinuingEngine(critique="Reasonable step.\n", score=_score)
    streamed = ContinuingEngine(critique="Reasonable step.\n", score=_score)
    a = PersGenPRM(separate, score_pass="separate", min_requests_for_floor=1).score_groups(_groups())[0]
    b = PersGenPRM(streamed, score_pass="streamed", min_requests_for_floor=1).score_groups(_groups())[0]
    assert [c[0] for c in separate.calls] == ["critique", "score"]  # two passes, generate_continued unused
    assert streamed.calls[0][0] == "continued" and not separate.follow_ups
    assert sorted(streamed.follow_ups) == sorted(separate.calls_of("score")[0][2])  # the very same score prompts
    assert [[s.score for s in r] for r in a.step_scores] == [[0.75, 0.75], [0.75, -0.5]]
    assert [[s.score for s in r] for r in b.step_scores] == [[0.75, 0.75], [0.75, -0.5]]
    assert a.metrics.parsed_constrained == b.metrics.parsed_constrained == 3  # step 1 is shared: 3 generated


def test_engines_without_generate_continued_use_the_separate_pass():
    engine = ScriptedEngine(critique="Fine.\n", score=" 0.25")
    out = PersGenPRM(engine, score_pass="streamed", min_requests_for_floor=1).score_groups(_groups())[0]
    assert [c[0] for c in engine.calls] == ["critique", "score"]
    assert out.metrics.parse_rate == 1.0 and out.step_scores[0][0].score == 0.25


def test_bad_score_pass_is_refused_with_its_key():
    with pytest.raises(ValueError, match="score_pass"):
        PersGenPRM(ScriptedEngine(), score_pass="both")
    with pytest.raises(ConfigError, match=r"reward\.score_pass"):
        load_config("cpu_demo", ["reward.score_pass=both"])
    assert load_config("cpu_demo").reward.score_pass == "streamed"
