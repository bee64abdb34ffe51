"""Which finished groups the learner trains on next, and how many may be in flight.

``max_staleness`` bounds asynchrony in policy versions: a group sampled by version v may train the learner at
version V only if V - v <= max_staleness (0 = fully on-policy). The driver keeps at most
``groups_per_update * (1 + max_staleness)`` groups in flight, so with 0 it is exactly the synchronous loop
(generate B groups, learn, sync) and with k the rollouts run up to k updates ahead of the learner.
Groups that arrive too old are dropped and counted, never silently trained on.
"""

from __future__ import annotations

from cdra_ray.messages import Group


class GroupBuffer:
    def __init__(self, groups_per_update: int, max_staleness: int):
        if groups_per_update < 1:
            raise ValueError(f"groups_per_update must be >= 1, got {groups_per_update}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.groups_per_update = groups_per_update
        self.max_staleness = max_staleness
        self._ready: list[Group] = []
        self.dropped_stale = 0
        self.dropped_uids: list[str] = []

    @property
    def max_in_flight(self) -> int:
        return self.groups_per_update * (1 + self.max_staleness)

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, group: Group) -> None:
        self._ready.append(group)

    def is_stale(self, group: Group, learner_version: int) -> bool:
        return learner_version - group.policy_version > self.max_staleness

    def pop_batch(self, learner_version: int) -> list[Group] | None:
        """B fresh groups in arrival order, or None while fewer are ready; stale ones are dropped first."""
        fresh = []
        for group in self._ready:
            if self.is_stale(group, learner_version):
                self.dropped_stale += 1
                self.dropped_uids.append(group.scenario.uid)
            else:
                fresh.append(group)
        self._ready = fresh
        if len(fresh) < self.groups_per_update:
            return None
        batch, self._ready = fresh[: self.groups_per_update], fresh[self.groups_per_update:]
        return batch

    def pending(self) -> list[Group]:
        return list(self._ready)
