"""Re-index a response's token-to-step map when the reward model scored coarser spans than the segmenter cut.

Segmentation gives every token the index of its step (``Group.token_steps``, over ``Group.step_spans``); the
learner reads ``token_steps`` as indices into ``Group.step_scores``. A process reward scores exactly the
segmenter's spans, so nothing changes; an outcome reward scores ONE span over the whole response, so every token
must point at span 0, or the batch builder rejects the group ("token_steps range ... does not index its 1
step_scores"). :func:`remap_token_steps` does this for any scored spans that are unions of segmenter spans
(identity, whole response, or merged steps), exactly, without the tokenizer: a token that starts inside segmenter
span j starts inside the scored span that contains span j. Finer scored spans cannot be mapped without character
offsets and are an error.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

from cdra_ray.messages import Group, StepScore


def remap_token_steps(token_steps: Sequence[int], old_spans: Sequence[tuple[int, int]],
                      new_spans: Sequence[tuple[int, int]]) -> list[int]:
    """``token_steps`` over ``old_spans`` re-expressed over ``new_spans`` (each old span inside one new span)."""
    if not new_spans:
        raise ValueError("remap_token_steps: new_spans is empty")
    if list(map(tuple, old_spans)) == list(map(tuple, new_spans)):
        return [int(j) for j in token_steps]
    new_starts = [int(s) for s, _ in new_spans]
    mapping = []
    for j, (start, end) in enumerate(old_spans):
        k = min(max(bisect_right(new_starts, int(start)) - 1, 0), len(new_spans) - 1)
        if start == end:  # an empty span holds no character: any new span that touches it will do
            if not new_spans[k][0] <= start <= new_spans[k][1]:
                raise ValueError(
                    f"remap_token_steps: empty step span {j} ({start}, {end}) lies outside the scored spans")
        elif not (new_spans[k][0] <= start and end <= new_spans[k][1]):
            raise ValueError(
                f"remap_token_steps: step span {j} ({start}, {end}) is split by the scored spans {list(new_spans)}; "
                "scored spans must be unions of whole steps (map tokens from character offsets instead)"
            )
        mapping.append(k)
    out = []
    for t, j in enumerate(token_steps):
        if not 0 <= int(j) < len(mapping):
            raise ValueError(f"remap_token_steps: token {t} has step {j}, outside the {len(mapping)} step spans")
        out.append(mapping[int(j)])
    return out


def align_group_token_steps(group: Group, step_scores: Sequence[Sequence[StepScore]]) -> list[list[int]]:
    """New ``token_steps`` of ``group`` for the spans of ``step_scores`` (one list of scores per response).

    Suggested call site: :meth:`cdra_ray.rewards.base.RewardOutput.attach` (or the reward service right after
    it), so every reward variant feeds the learner without knowing how the group was segmented.
    """
    if len(step_scores) != group.size or len(group.token_steps) != group.size or len(group.step_spans) != group.size:
        raise ValueError(
            f"align_group_token_steps: group {group.scenario.uid!r} has {group.size} samples, "
            f"{len(group.step_spans)} step_spans, {len(group.token_steps)} token_steps, {len(step_scores)} scored rows"
        )
    return [
        remap_token_steps(steps, spans, [(s.start, s.end) for s in scores])
        for steps, spans, scores in zip(group.token_steps, group.step_spans, step_scores)
    ]
