"""RewardService: scores the steps of every group that streams through, batching across groups.

Wraps any :class:`~cdra_ray.rewards.base.RewardModel` (``reward.kind``). Groups arrive one call at a time;
the :class:`MicroBatcher` folds concurrent calls so the model sees every step request of several groups in
one engine call. Keeps the run's cumulative reward metrics (parse rate, cache hits, defaults) for the driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.messages import Group
from cdra_ray.rewards.base import RewardMetrics, RewardModel


class RewardService:
    def __init__(self, model: RewardModel, *, max_wait_s: float = 0.05):
        self.model = model
        self.totals = RewardMetrics()
        self.groups_scored = 0
        self._batcher: MicroBatcher[Group, Group] = MicroBatcher(self.score_groups, max_wait_s=max_wait_s)

    def score_group(self, group: Group) -> Group:
        return self._batcher(group)

    def score_groups(self, groups: list[Group]) -> list[Group]:
        """One batch in one model call: the batcher's batch function, and the entry point of callers that batch
        themselves (Ray Serve's ``@serve.batch`` in ``cdra_ray/serving``)."""
        start = time.perf_counter()
        outputs = self.model.score_groups(groups)
        share = (time.perf_counter() - start) / len(groups)
        scored = []
        for group, output in zip(groups, outputs):
            scored.append(output.attach(group).with_timing("reward", share))
            self.totals = self.totals.merge(output.metrics)
        self.groups_scored += len(groups)
        return scored

    def counts(self) -> ServiceCounts:
        """The running totals as counts, which add up across replicas (:mod:`cdra_ray.actors.reward_pool`)."""
        return ServiceCounts(self.totals, len(self._batcher.batch_sizes), self.groups_scored)

    def metrics(self) -> dict[str, float]:
        """Cumulative over the run so far (parse rate is a run-level figure, like its floor)."""
        return self.counts().to_log_dict()


@dataclass(frozen=True)
class ServiceCounts:
    """What one reward service has done so far: request outcomes, engine batches, groups scored."""

    totals: RewardMetrics
    batches: int
    groups: int

    def merge(self, other: ServiceCounts) -> ServiceCounts:
        return ServiceCounts(self.totals.merge(other.totals), self.batches + other.batches, self.groups + other.groups)

    def to_log_dict(self) -> dict[str, float]:
        out = self.totals.to_log_dict("reward/")
        out["reward/batches"] = float(self.batches)
        out["reward/groups"] = float(self.groups)
        return out
