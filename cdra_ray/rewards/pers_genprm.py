"""Pers-GenPRM scoring (paper §2.3, Eq. 1): for every step j of every response, (P, q, steps 1..j) -> critique,
then a score in [-1, 1].

How a batch is scored:
1. Every (group, response, step) becomes one request, rendered with the judge's chat template
   (``prompts.py``). Requests already answered in an earlier batch come from the LRU cache; identical requests
   inside the batch are sent once.
2. All remaining requests of all groups go to the engine together, one engine run for both phases with
   ``score_pass="streamed"`` (one ``generate`` call per phase with ``"separate"``); every step's request is
   independent of the others, so nothing waits for anything.
3. ``score_mode="constrained"`` (default) makes the score line structurally certain: phase 1 writes the
   critique freely and stops at the string "SCORE" (the model never writes its own score); phase 2 continues
   prompt + critique + "\\nSCORE:" greedily under a regex that only admits a number in [-1, 1]. Departure from
   the paper, on purpose: the paper's model writes its score freely, and a small model that misses the format
   gets the default score for every step, so every advantage is 0 and nothing is learned, silently.
   ``score_mode="free"`` is the paper's behaviour: one free generation, parsed.
4. An output that still yields no score (an engine without regex support, or free mode) falls back to a free
   generation parsed as free text, then one greedy retry, then the configured default. Every route is counted
   in :class:`~cdra_ray.rewards.base.RewardMetrics`; when the run's parse rate drops under
   ``parse_rate_floor`` the next batch raises :class:`~cdra_ray.rewards.base.RewardParseError`.

Steps 1-4 are the shared judge core (:mod:`cdra_ray.rewards.judge`); this module chooses the spans (the steps) and
renders their prompts.

Only the judge's own output is ever parsed: the policy's response is inside the prompt, never inside the
parsed text, so a response that writes "SCORE: 1.0" cannot score itself.
"""

from __future__ import annotations

from typing import Sequence

from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.engines.base import GenerationEngine
from cdra_ray.messages import Group
from cdra_ray.rewards.base import register_reward_model
from cdra_ray.rewards.catalog import PersGenPRMOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.cache import request_key  # noqa: F401  (re-exported for callers of the old layout)
from cdra_ray.rewards.judge import (  # noqa: F401  (SCORE_REGEX and clean_critique live in the judge core)
    SCORE_MODES,
    SCORE_REGEX,
    STEP_SCALE,
    CritiqueScoreJudge,
    JudgeRequest,
    JudgeRewardModel,
    clean_critique,
)
from cdra_ray.rewards.prompts import render_step_critique_prompt

CRITIQUE_STOP = STEP_SCALE.stops[0]


@register_reward_model("pers_genprm")
class PersGenPRM(JudgeRewardModel):
    """Step-wise critique-then-score reward model over any :class:`GenerationEngine`.

    The judge is frozen for a run, so results are cached by the hash of the rendered request and the generation
    settings. Spans come from ``Group.step_spans`` (set upstream by segmentation, which also mapped tokens to
    those spans, so they are scored as given); a group without spans is segmented here with
    :func:`~cdra_ray.algorithms.steps.segment_steps` and ``max_steps``.
    """

    title = "Pers-GenPRM"

    def __init__(
        self,
        engine: GenerationEngine,
        *,
        critique_max_tokens: int = _D.critique_max_tokens,
        critique_temperature: float = _D.critique_temperature,
        score_mode: str = _D.score_mode,
        default_score: float = _D.default_score,
        parse_rate_floor: float = _D.parse_rate_floor,
        min_requests_for_floor: int = _D.min_requests_for_floor,
        max_steps: int | None = _D.max_steps,
        cache_size: int = _D.cache_size,
        score_max_tokens: int = 8,
        seed: int | None = None,
        score_pass: str = _D.score_pass,
    ) -> None:
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"PersGenPRM max_steps must be >= 1 or None, got {max_steps}")
        judge = CritiqueScoreJudge(
            engine, STEP_SCALE, name="pers_genprm", critique_max_tokens=critique_max_tokens,
            temperature=critique_temperature, score_mode=score_mode, default_score=default_score,
            cache_size=cache_size, score_max_tokens=score_max_tokens, seed=seed,
            score_pass=score_pass,
        )
        super().__init__(judge, parse_rate_floor=parse_rate_floor, min_requests_for_floor=min_requests_for_floor)
        self.max_steps = max_steps

    def _spans(self, group: Group) -> list[list[tuple[int, int]]]:
        if not group.step_spans:
            return [segment_steps(s.response_text, self.max_steps) for s in group.samples]
        if len(group.step_spans) != group.size:
            raise ValueError(
                f"Group {group.scenario.uid!r}: step_spans has {len(group.step_spans)} entries for "
                f"{group.size} samples"
            )
        return [[tuple(span) for span in spans] for spans in group.step_spans]

    def requests(self, groups: Sequence[Group]) -> list[JudgeRequest]:
        """One request per (group, response, step), in order; step j's prompt holds steps 1..j."""
        tokenizer = self.engine.tokenizer
        requests: list[JudgeRequest] = []
        rendered: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}  # identical contexts render once
        for gi, group in enumerate(groups):
            P, q = group.scenario.preference, group.scenario.query
            for ri, (sample, spans) in enumerate(zip(group.samples, self._spans(group))):
                text = sample.response_text
                for start, end in spans:
                    if not 0 <= start <= end <= len(text):
                        raise ValueError(
                            f"Group {group.scenario.uid!r} response {ri}: step span ({start}, {end}) lies outside "
                            f"its text of {len(text)} characters"
                        )
                steps = [text[s:e] for s, e in spans]
                for j, span in enumerate(spans):
                    context = (P, q, tuple(steps[: j + 1]))
                    if context not in rendered:
                        rendered[context] = render_step_critique_prompt(tokenizer, P, q, context[2])
                    requests.append(JudgeRequest(gi, ri, (span[0], span[1]), rendered[context]))
        return requests
