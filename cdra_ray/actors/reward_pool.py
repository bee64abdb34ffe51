"""RewardPool: ``reward.num_replicas`` reward actors behind the calls the driver makes on one reward actor.

The driver calls ``reward.score_group.remote(group_ref)`` once per scenario when it submits the scenario's chain,
and ``reward.metrics.remote()`` once per update. The pool sends each ``score_group`` call to the replica with the
fewest calls outstanding (submitted and not yet finished, whether still waiting for their group or being
scored); ties go to the replica picked least recently, so an idle pool takes turns. The load is counted in calls,
not tokens: when the call is routed its group is still being generated, so its size is not known yet, and every
group of a run has the same G responses.

Faults stay per replica. Each replica is its own Ray actor with its own restarts and incarnation token, and the
driver watches each one under its own name (:meth:`RewardPool.members`: "reward service 0", "reward service 1"...).
A replica that died for good (its ``run.max_actor_restarts`` spent) is taken out of the pool
(:meth:`RewardPool.retire`) and the run goes on with the others; only when none is left does the run stop.

``metrics.remote()`` adds up the replicas' counts (requests, parses, defaults, engine batches, groups) into the
same keys one reward service reports, so the parse rate is the run's over all replicas, and adds each replica's
groups as ``reward/replica_<i>/groups``. A replica that cannot answer (retired) contributes its last known counts.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from cdra_ray.actors.reward_service import ServiceCounts
from cdra_ray.rewards.base import RewardMetrics


def choose_replica(outstanding: Sequence[int], last_picked: Sequence[int], down: set[int] = frozenset()) -> int:
    """Index of the replica to take the next call: fewest calls outstanding, then least recently picked (-1 =
    never), then lowest index. Replicas in ``down`` are skipped; raises if every replica is down."""
    live = [i for i in range(len(outstanding)) if i not in down]
    if not live:
        raise RuntimeError(f"no reward replica is left: all {len(outstanding)} died for good")
    return min(live, key=lambda i: (outstanding[i], last_picked[i], i))


class RayCalls:
    """The few Ray operations the pool needs (tests pass a fake with the same three methods)."""

    def finished(self, refs: list) -> list:
        import ray

        return ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []

    def get(self, refs: list) -> list:
        import ray

        return ray.get(refs)

    def put(self, value: Any) -> Any:
        import ray

        return ray.put(value)


class _Method:
    """``pool.<name>.remote(...)``: the call surface of an actor method."""

    def __init__(self, call: Callable):
        self.remote = call


class RewardPool:
    def __init__(self, replicas: Sequence[Any], calls: RayCalls | None = None):
        if not replicas:
            raise ValueError("a reward pool needs at least one replica")
        self.replicas = list(replicas)
        self.names = [f"reward service {i}" for i in range(len(self.replicas))]
        self._calls = calls or RayCalls()
        self._outstanding: list[list] = [[] for _ in self.replicas]
        self._last_picked = [-1] * len(self.replicas)
        self._picks = 0
        self.routed = [0] * len(self.replicas)  # calls sent to each replica (resubmissions included)
        self.down: set[int] = set()
        self._last_counts = [ServiceCounts(RewardMetrics(), 0, 0) for _ in self.replicas]
        self.score_group = _Method(self._score_group)
        self.metrics = _Method(self._metrics)

    # -- routing ---------------------------------------------------------------------------------------
    def outstanding(self) -> list[int]:
        """Calls each replica has not finished yet (finished ones are forgotten here)."""
        pending = [ref for refs in self._outstanding for ref in refs]
        done = set(self._calls.finished(pending))
        self._outstanding = [[ref for ref in refs if ref not in done] for refs in self._outstanding]
        return [len(refs) for refs in self._outstanding]

    def _score_group(self, group: Any) -> Any:
        index = choose_replica(self.outstanding(), self._last_picked, self.down)
        ref = self.replicas[index].score_group.remote(group)
        self._outstanding[index].append(ref)
        self._last_picked[index] = self._picks
        self._picks += 1
        self.routed[index] += 1
        return ref

    # -- faults ----------------------------------------------------------------------------------------
    def members(self) -> list[tuple[str, Any]]:
        """``(name, actor)`` of every replica still in the pool, for the driver's restart tracking."""
        return [(self.names[i], self.replicas[i]) for i in range(len(self.replicas)) if i not in self.down]

    def retire(self, name: str) -> bool:
        """Take the replica ``name`` out (it died for good); False when it was the last one (the run must stop)."""
        index = self.names.index(name)
        if len(self.down | {index}) == len(self.replicas):
            return False
        self.down.add(index)
        self._outstanding[index] = []
        return True

    # -- metrics ---------------------------------------------------------------------------------------
    def _metrics(self) -> Any:
        """An object reference holding the summed metrics (gathered now: the driver reads them right away)."""
        live = [i for i in range(len(self.replicas)) if i not in self.down]
        for i, counts in zip(live, self._calls.get([self.replicas[i].counts.remote() for i in live])):
            self._last_counts[i] = counts
        return self._calls.put(pool_metrics(self._last_counts))


def pool_metrics(per_replica: Sequence[ServiceCounts]) -> dict[str, float]:
    """The replicas' counts summed into one service's metrics, plus each replica's groups scored."""
    total = ServiceCounts(RewardMetrics(), 0, 0)
    for counts in per_replica:
        total = total.merge(counts)
    out = total.to_log_dict()
    for i, counts in enumerate(per_replica):
        out[f"reward/replica_{i}/groups"] = float(counts.groups)
    return out
