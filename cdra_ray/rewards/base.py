"""The reward contract every reward variant implements, and the registry that picks one by name.

A reward model takes finished groups and returns, per group, one :class:`RewardOutput`: for every response a
list of scored character spans (:class:`~cdra_ray.messages.StepScore`) plus :class:`RewardMetrics` that log
themselves. Process rewards (Pers-GenPRM, PRM) give one span per step; an outcome reward (scalar RM, generative
judge, rubric) is one span over the whole response (:func:`outcome_step_score`), so every variant feeds every
advantage estimator unchanged.

Adding a variant: write a class with ``score_groups(groups) -> list[RewardOutput]`` and decorate it with
``@register_reward_model("my_kind", MyOptions)`` (:mod:`.catalog`); once its module is imported, a config selects
it with ``reward.kind: my_kind`` and its options come from ``reward.options``. Built-in kinds are listed in the
catalog, so a config is checked without importing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from cdra_ray.messages import Group, StepScore
from cdra_ray.rewards.catalog import REWARDS, create_reward_model, register_reward_model  # noqa: F401


class RewardParseError(RuntimeError):
    """The reward model's outputs could not be read often enough to trust the learning signal.

    Raised instead of silently training on default scores (which makes every advantage zero). ``outputs`` holds
    the batch that tripped the check, for inspection.
    """

    def __init__(self, message: str, outputs: list[RewardOutput] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or []


@dataclass
class RewardMetrics:
    """Counts of what happened to the scoring requests of one group (or, summed, of a batch or a whole run).

    Every request ends in exactly one of: a cache hit, a duplicate of another request of the same batch, or a
    fresh generation; a fresh generation ends parsed by the constrained score decoding, parsed from free text,
    or defaulted. ``retried`` counts fresh requests that needed the greedy retry (a subset, not a fourth outcome).
    """

    requests: int = 0  # scores asked for (one per scored span)
    cache_hits: int = 0  # served from the cache of earlier batches
    deduplicated: int = 0  # identical to another request of the same batch, scored once
    parsed_constrained: int = 0  # score read from the constrained (regex-guided) score continuation
    parsed_free: int = 0  # score read from free-form text (free mode, or the fallback of constrained mode)
    retried: int = 0  # needed the one greedy retry
    defaulted: int = 0  # nothing readable after the retry: got the configured default score
    example_unparsed: str = ""  # one raw output that could not be parsed (for error messages, not logged)

    _COUNTS = (  # no annotation: a class constant, not a dataclass field
        "requests",
        "cache_hits",
        "deduplicated",
        "parsed_constrained",
        "parsed_free",
        "retried",
        "defaulted",
    )

    @property
    def parsed(self) -> int:
        return self.parsed_constrained + self.parsed_free

    @property
    def generated(self) -> int:
        """Requests that went to the model (not served by the cache or a duplicate)."""
        return self.parsed + self.defaulted

    @property
    def parse_rate(self) -> float:
        """Share of generated requests whose score was read from the model's own output; NaN if none."""
        return self.parsed / self.generated if self.generated else math.nan

    def merge(self, other: RewardMetrics) -> RewardMetrics:
        """Sum of two sets of counts (a new object); keeps an example of an unparsed output if either has one."""
        merged = RewardMetrics(**{name: getattr(self, name) + getattr(other, name) for name in self._COUNTS})
        merged.example_unparsed = other.example_unparsed or self.example_unparsed
        return merged

    @classmethod
    def total(cls, metrics: Sequence[RewardMetrics]) -> RewardMetrics:
        out = cls()
        for m in metrics:
            out = out.merge(m)
        return out

    def to_log_dict(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat numbers for JSONL/TensorBoard; ``parse_rate`` only when something was generated."""
        out = {f"{prefix}{name}": float(getattr(self, name)) for name in self._COUNTS}
        if self.generated:
            out[f"{prefix}parse_rate"] = self.parse_rate
        return out


@dataclass
class RewardOutput:
    """The reward model's verdict on one group: scored spans per response, and how they were obtained."""

    step_scores: list[list[StepScore]]  # (G, T_i) spans in response order; an outcome reward has T_i = 1
    metrics: RewardMetrics = field(default_factory=RewardMetrics)

    def response_rewards(self) -> list[float]:
        """Dense return of each response, R(y_i) = sum_j r_i^j (paper §2.3)."""
        return [sum(s.score for s in scores) for scores in self.step_scores]

    def attach(self, group: Group) -> Group:
        """``group`` with these scores (the message the learner receives); checks they fit its responses."""
        if len(self.step_scores) != group.size:
            raise ValueError(
                f"RewardOutput has scores for {len(self.step_scores)} responses but group "
                f"{group.scenario.uid!r} has {group.size} samples"
            )
        for i, (scores, sample) in enumerate(zip(self.step_scores, group.samples)):
            for s in scores:
                if not 0 <= s.start <= s.end <= len(sample.response_text):
                    raise ValueError(
                        f"StepScore span ({s.start}, {s.end}) of response {i} in group {group.scenario.uid!r} "
                        f"lies outside its text of {len(sample.response_text)} characters"
                    )
        token_steps = group.token_steps
        if group.token_steps and group.step_spans:
            # tokens follow the spans that were actually scored (an outcome reward scores one span per response)
            from cdra_ray.rewards.span_align import align_group_token_steps

            token_steps = align_group_token_steps(group, self.step_scores)
        return group.with_scores(self.step_scores, token_steps)


def outcome_step_score(response_text: str, score: float, critique: str = "", parsed: bool = True) -> StepScore:
    """An outcome reward as the one span covering the whole response."""
    return StepScore(start=0, end=len(response_text), score=score, critique=critique, parsed=parsed)


@runtime_checkable
class RewardModel(Protocol):
    """Anything that scores groups; all groups of a call may be batched together by the implementation."""

    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        """One :class:`RewardOutput` per group, in the same order."""
        ...


REWARD_MODELS = REWARDS  # name -> (options class, implementation); see catalog.py
