"""``rule``: a reward computed by a fixed rule from the response text, with no model: a known, learnable target.

Each scored span (a step from ``Group.step_spans``, or the whole response when segmentation gave none) gets the
share of its characters that belong to ``target_chars``, a number in [0, 1] (an empty span scores 0). The default
target, the lowercase ASCII letters, is one a randomly initialised tiny Llama can learn in a few dozen updates:
its byte-level vocabulary mixes word pieces with single bytes, so a policy raises the share by preferring word
pieces. This exists to show that the training loop improves what it is rewarded for (a sign error in the
advantage, a masking bug or a rollout engine left on stale weights all keep the curve flat); it is not a
preference reward and not in the paper.
"""

from __future__ import annotations

import string
from typing import ClassVar

from cdra_ray.messages import Group, StepScore
from cdra_ray.rewards.base import RewardMetrics, RewardOutput, register_reward_model

DEFAULT_TARGET_CHARS = string.ascii_lowercase


def target_share(text: str, target_chars: str | frozenset[str]) -> float:
    """Share of the characters of ``text`` that are in ``target_chars``; 0.0 for the empty text."""
    if not text:
        return 0.0
    target = target_chars if isinstance(target_chars, frozenset) else frozenset(target_chars)
    return sum(ch in target for ch in text) / len(text)


@register_reward_model("rule")
class RuleReward:
    """Scores every step by :func:`target_share` of its text; no engine, no model, no randomness."""

    needs_engine: ClassVar[bool] = False  # wiring passes ``model_dir`` instead of an engine

    def __init__(self, model_dir: str | None = None, *, target_chars: str = DEFAULT_TARGET_CHARS) -> None:
        # model_dir: accepted for the wiring's model-based constructor call; a rule reads no model.
        if not isinstance(target_chars, str) or not target_chars:
            raise ValueError(f"rule reward: target_chars must be a non-empty string, got {target_chars!r}")
        self.target = frozenset(target_chars)

    def _spans(self, group: Group, i: int) -> list[tuple[int, int]]:
        text = group.samples[i].response_text
        if group.step_spans:
            return [(int(a), int(b)) for a, b in group.step_spans[i]]
        return [(0, len(text))]

    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        outputs = []
        for group in groups:
            if group.step_spans and len(group.step_spans) != group.size:
                raise ValueError(f"rule: group {group.scenario.uid!r}: step_spans has {len(group.step_spans)} "
                                 f"entries for {group.size} samples")
            rows = []
            for i, sample in enumerate(group.samples):
                text = sample.response_text
                rows.append([StepScore(start=a, end=b, score=target_share(text[a:b], self.target), critique="")
                             for a, b in self._spans(group, i)])
            requests = sum(len(r) for r in rows)
            outputs.append(RewardOutput(rows, RewardMetrics(requests=requests, parsed_free=requests)))
        return outputs
