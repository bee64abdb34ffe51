"""The learner as one object over ``learner.num_ranks`` Ray actors that form one DeepSpeed process group.

The driver, the weight publishers and checkpointing call ``group.<method>.remote(...)`` as they would call one
actor handle, and get one ObjectRef back. Which ranks a call reaches:

- all ranks: ``train_on_groups``, ``save_state``, ``load_state``, ``save_policy`` (collectives: the gradient
  reduction, DeepSpeed's checkpoint shards, the checkpoint barriers) and ``incarnation`` (a dead rank is a
  dead learner);
- rank 0, all ranks under ZeRO-3: ``export_weights``, ``sequence_logprobs``, ``broadcast_weights`` (ZeRO-3
  gathers each parameter collectively);
- rank 0: ``policy_version``, ``connect_weight_sync`` (rank 0 talks to the rollout engines).

A call on several ranks returns the ObjectRef of a small Ray task (:func:`_rank0_result`) that waits for every
rank and returns rank 0's result. When one rank fails the others may be blocked in a collective that will never
complete: they get :data:`GRACE_S` seconds, then the task kills the ranks still running and raises the first
error (a dead rank surfaces as Ray's actor-death error, which the driver already treats as the learner's
death). ``export_weights`` under ZeRO-3 hands out rank 0's own reference (the weights are not copied through a
task); the other ranks' results are checked by the next call on all ranks.

Placement: one bundle of ``learner.num_cpus`` CPUs and ``learner.num_gpus`` GPUs per rank in a Ray placement
group, ``learner.placement_strategy`` ``STRICT_PACK`` (one node) or ``PACK`` (several nodes allowed: the
checkpoint directory must then be on a file system every node shares). Rank 0 picks the rendezvous address and
port on its own node; the other ranks are given them. The reference policy stays one separate actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

GRACE_S = 30.0  # how long the other ranks may take to finish after one rank failed
PLACEMENT_TIMEOUT_S = 300.0

ALL_RANKS = ("train_on_groups", "save_state", "load_state", "save_policy", "incarnation")
ALL_RANKS_UNDER_ZERO3 = ("export_weights", "sequence_logprobs", "broadcast_weights")
RANK0_ONLY = ("policy_version", "connect_weight_sync")


@ray.remote(num_cpus=0)
def _rank0_result(refs: list, ranks: list, also: list) -> Any:
    """Wait for every rank's result (and the ``also`` refs of earlier calls); return rank 0's."""
    pending = [*refs, *also]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
    except BaseException:
        if pending:
            _, stuck = ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
            if stuck:
                for rank in ranks:
                    ray.kill(rank)
        raise
    return ray.get(refs[0])


@dataclass
class _Call:
    """``group.<name>.remote(*args)``: one ObjectRef, as for an actor method."""

    group: "LearnerGroup"
    name: str

    def remote(self, *args):
        return self.group.call(self.name, *args)


class LearnerGroup:
    """The ranks of the learner behind one handle-like object (see the module docstring)."""

    def __init__(self, ranks: list, placement=None, zero_stage: int = 0):
        self.ranks, self.placement, self.zero_stage = ranks, placement, zero_stage
        self._unchecked: list = []  # results of other ranks not yet awaited (export_weights under ZeRO-3)
        for name in (*ALL_RANKS, *ALL_RANKS_UNDER_ZERO3, *RANK0_ONLY):
            setattr(self, name, _Call(self, name))

    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    def targets(self, name: str) -> list:
        """The ranks a call of ``name`` must reach."""
        if name in ALL_RANKS or (name in ALL_RANKS_UNDER_ZERO3 and self.zero_stage == 3):
            return self.ranks
        if name in ALL_RANKS_UNDER_ZERO3 or name in RANK0_ONLY:
            return self.ranks[:1]
        raise AttributeError(f"LearnerGroup has no method {name!r}")

    def call(self, name: str, *args):
        targets = self.targets(name)
        if len(targets) > 1:  # one copy of each argument in the object store, not one per rank
            args = tuple(a if isinstance(a, ray.ObjectRef) else ray.put(a) for a in args)
        refs = [getattr(rank, name).remote(*args) for rank in targets]
        if name == "export_weights":  # rank 0's own reference: the weights are not copied through a task
            self._unchecked += refs[1:]
            return refs[0]
        if len(refs) == 1 and not self._unchecked:
            return refs[0]
        also, self._unchecked = self._unchecked, []
        return _rank0_result.remote(refs, self.ranks, also)

    def kill(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        if self.placement is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.placement)
            self.placement = None


def start_learner_group(settings, *, num_ranks: int, num_cpus: float, num_gpus: float, env_vars: dict[str, str],
                        strategy: str = "STRICT_PACK", resources: dict | None = None) -> LearnerGroup:
    """Place ``num_ranks`` learner actors, rendezvous them and build every rank's DeepSpeed engine.
    ``resources``: custom resources (``learner.resources``) each rank's bundle asks for."""
    from ray.util import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cdra_ray.actors.shells import LearnerActor

    custom = {name: float(amount) for name, amount in (resources or {}).items()}
    bundle = {**{k: v for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}, **custom}
    placement = None
    if bundle:
        placement = placement_group([dict(bundle) for _ in range(num_ranks)], strategy=strategy)
        ready, _ = ray.wait([placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            from ray.util import remove_placement_group

            remove_placement_group(placement)
            raise RuntimeError(
                f"cannot place learner.num_ranks={num_ranks} ranks of {bundle} each ({strategy}, "
                f"learner.placement_strategy) within {PLACEMENT_TIMEOUT_S:.0f} s: the cluster has "
                f"{ray.cluster_resources()}; lower learner.num_ranks / learner.num_gpus or add nodes")
    ranks = []
    for rank in range(num_ranks):
        scheduling = ({"scheduling_strategy": PlacementGroupSchedulingStrategy(placement, rank)}
                      if placement is not None else {})
        ranks.append(LearnerActor.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                          runtime_env={"env_vars": env_vars},
                                          **({"resources": custom} if custom else {}), **scheduling
                                          ).remote(rank, num_ranks))
    group = LearnerGroup(ranks, placement, zero_stage=settings.zero_stage)
    try:
        address, port = ray.get(ranks[0].endpoint.remote())
        settings_ref = ray.put(settings)
        ray.get(_rank0_result.remote([r.start.remote(settings_ref, address, port) for r in ranks], ranks, []))
    except BaseException:
        group.kill()
        raise
    return group
