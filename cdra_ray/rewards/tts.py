"""``tts``: test-time scaling of the generative judge (Table 3's "GRPO (Test-Time Scaling)").

The ``genrm`` judge (same prompt, same [-1, 1] scale), but each response gets ``samples`` = k critiques sampled at
``temperature`` (one engine call with ``n=k``), each followed by its own regex-forced score, and the k scores are
combined by :func:`~cdra_ray.rewards.judge.aggregate_scores`: ``mean``, or ``vote`` (the most frequent score after
rounding to ``vote_decimals`` places; ties go to the value nearest the mean, then the lower one). Samples whose
score cannot be read are left out; a response none of whose k samples gives a score is retried once greedily and
then gets ``default_score`` (counted). Metrics count responses, not samples: a response is "parsed" when at least
one sample was. The critique stored on the span lists every sample with its score.

The paper names the variant without details; k, temperature and the aggregation are ours (configurable).
Cache note: a sampled verdict is cached like a greedy one (the same response later gets the same aggregate);
``cache_size=0`` resamples every time.
"""

from __future__ import annotations

from cdra_ray.engines.base import GenerationEngine
from cdra_ray.rewards.base import register_reward_model
from cdra_ray.rewards.catalog import TTSOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.genrm import render_outcome_prompt
from cdra_ray.rewards.judge import STEP_SCALE, CritiqueScoreJudge
from cdra_ray.rewards.outcome_judge import OutcomeJudgeModel


@register_reward_model("tts")
class TTSGenRM(OutcomeJudgeModel):
    """k sampled critiques + forced scores per response, aggregated by mean or majority vote."""

    def __init__(
        self,
        engine: GenerationEngine,
        *,
        samples: int = _D.samples,
        aggregate: str = _D.aggregate,
        temperature: float = _D.temperature,
        vote_decimals: int = _D.vote_decimals,
        critique_max_tokens: int = _D.critique_max_tokens,
        score_mode: str = _D.score_mode,
        default_score: float = _D.default_score,
        parse_rate_floor: float = _D.parse_rate_floor,
        min_requests_for_floor: int = _D.min_requests_for_floor,
        cache_size: int = _D.cache_size,
        score_max_tokens: int = 8,
        seed: int | None = None,
        score_pass: str = _D.score_pass,
    ) -> None:
        if samples > 1 and temperature <= 0:
            raise ValueError(f"tts: temperature must be > 0 when samples > 1 (k greedy critiques are identical), "
                             f"got temperature={temperature} with samples={samples}")
        judge = CritiqueScoreJudge(
            engine, STEP_SCALE, name="tts", critique_max_tokens=critique_max_tokens, temperature=temperature,
            score_mode=score_mode, default_score=default_score, samples=samples, aggregate=aggregate,
            vote_decimals=vote_decimals, cache_size=cache_size, score_max_tokens=score_max_tokens, seed=seed,
            score_pass=score_pass,
        )
        super().__init__(judge, render_outcome_prompt, parse_rate_floor=parse_rate_floor,
                         min_requests_for_floor=min_requests_for_floor)
