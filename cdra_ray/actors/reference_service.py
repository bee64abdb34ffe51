"""ReferenceService: per-token log pi_ref for every group that streams through, batched across groups."""

from __future__ import annotations

import time

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.messages import Group


class ReferenceService:
    def __init__(self, reference, *, max_wait_s: float = 0.05):
        """``reference`` is a :class:`cdra_ray.learner.reference.ReferencePolicy` (or anything with ``logprobs``)."""
        self.reference = reference
        self._batcher: MicroBatcher[Group, Group] = MicroBatcher(self._annotate_batch, max_wait_s=max_wait_s)

    def annotate_group(self, group: Group) -> Group:
        return self._batcher(group)

    def _annotate_batch(self, groups: list[Group]) -> list[Group]:
        start = time.perf_counter()
        per_group = self.reference.logprobs(groups)
        share = (time.perf_counter() - start) / len(groups)
        return [group.with_ref_logprobs(values).with_timing("reference", share)
                for group, values in zip(groups, per_group)]
