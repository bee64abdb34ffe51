"""``scalar_rm``: a classic scalar reward model (Table 3's "GRPO (with RM)"): one number per response, no critique,
no process.

Any HF directory loadable by ``AutoModelForSequenceClassification`` with ``num_labels=1`` (a Bradley-Terry RM
as trained by TRL's RewardTrainer or OpenRLHF, e.g. Skywork-Reward; a tiny one in tests) scores the
chat-rendered conversation (P, q, response) of :func:`~cdra_ray.rewards.head_models.render_scoring_input`; the
head's pooling reads the last non-pad token. Responses are scored in batches of ``batch_size`` rows (right-padded,
sorted by length so rows of similar length share a batch); the score is one span over the whole response.

``score_transform``: ``identity`` (default: the raw logit; group-relative estimators only need its order and
gaps) or ``tanh`` (squashes it into [-1, 1], comparable with the judges' scale in the ablation table).
It has its own model loading (no generation engine), so it is built with ``model_dir=``, not ``engine=``.
Nothing is parsed from text, so a response writing "SCORE: 1.0" is just text to the RM; it cannot break out of its
turn either (special-token strings in it stay text).
"""

from __future__ import annotations

import math
from pathlib import Path

from cdra_ray.messages import Group
from cdra_ray.rewards.base import RewardMetrics, RewardOutput, outcome_step_score, register_reward_model
from cdra_ray.rewards.catalog import ScalarRMOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.head_models import HeadRewardModel

SCORE_TRANSFORMS = ("identity", "tanh")


def transform_score(value: float, how: str) -> float:
    if how == "identity":
        return value
    if how == "tanh":
        return math.tanh(value)
    raise ValueError(f"score_transform must be one of {SCORE_TRANSFORMS}, got {how!r}")


@register_reward_model("scalar_rm")
class ScalarRM(HeadRewardModel):
    """Outcome reward from a sequence-classification head, batched over all responses of a call."""

    kind = "scalar_rm"
    head = "sequence"

    def __init__(self, model_dir: str | Path, *, dtype: str = _D.dtype, device: str = _D.device,
                 batch_size: int = _D.batch_size, max_length: int = _D.max_length,
                 score_transform: str = _D.score_transform, allow_untrained_head: bool = _D.allow_untrained_head,
                 num_threads: int | None = None) -> None:
        self.score_transform = score_transform
        super().__init__(model_dir, dtype=dtype, device=device, batch_size=batch_size, max_length=max_length,
                         allow_untrained_head=allow_untrained_head, num_threads=num_threads)

    def _check_options(self) -> None:
        transform_score(0.0, self.score_transform)  # validates the name

    def raw_scores(self, rows: list[list[int]]) -> list[float]:
        """The head's output for each tokenized conversation (batched, in input order)."""
        return self.forward(rows, lambda logits, i: logits[0].float().item())

    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        rows, owners = [], []
        for gi, group in enumerate(groups):
            for ri in range(group.size):
                rows.append(self.render(group, ri).input_ids)
                owners.append((gi, ri))
        scores = self.raw_scores(rows) if rows else []
        outputs = [RewardOutput(step_scores=[[] for _ in g.samples], metrics=RewardMetrics()) for g in groups]
        for (gi, ri), value in zip(owners, scores):
            text = groups[gi].samples[ri].response_text
            outputs[gi].step_scores[ri].append(outcome_step_score(text, transform_score(value, self.score_transform)))
            outputs[gi].metrics.requests += 1  # no parsing step: parse counts stay 0, parse_rate is not logged
        return self.finish(outputs)

