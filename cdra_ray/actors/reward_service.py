"""RewardService: scores the steps of every group that streams through, batching across groups.

Wraps any :class:`~cdra_ray.rewards.base.RewardModel` (``reward.kind``). Groups arrive one call at a time;
the :class:`MicroBatcher` folds concurrent calls so the model sees every step request of several groups in
one engine call. Keeps the run's cumulative reward metrics (parse rate, cache hits, defaults) for the driver.
"""

from __future__ import annotations

import time

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.messages import Group
from cdra_ray.rewards.base import RewardMetrics, RewardModel


class RewardService:
    def __init__(self, model: RewardModel, *, max_wait_s: float = 0.05):
        self.model = model
        self.totals = RewardMetrics()
        self._batcher: MicroBatcher[Group, Group] = MicroBatcher(self._score_batch, max_wait_s=max_wait_s)

    def score_group(self, group: Group) -> Group:
        return self._batcher(group)

    def _score_batch(self, groups: list[Group]) -> list[Group]:
        start = time.perf_counter()
        outputs = self.model.score_groups(groups)
        share = (time.perf_counter() - start) / len(groups)
        scored = []
        for group, output in zip(groups, outputs):
            scored.append(output.attach(group).with_timing("reward", share))
            self.totals = self.totals.merge(output.metrics)
        return scored

    def metrics(self) -> dict[str, float]:
        """Cumulative over the run so far (parse rate is a run-level figure, like its floor)."""
        out = self.totals.to_log_dict("reward/")
        out["reward/batches"] = float(len(self._batcher.batch_sizes))
        return out
