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
port on its own node; the other ranks are given them (:mod:`cdra_ray.actors.ranks`, shared with the sharded
reference of :mod:`cdra_ray.actors.reference_group`).
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from cdra_ray.actors.ranks import GRACE_S, PLACEMENT_TIMEOUT_S, kill_ranks, place_ranks, rendezvous  # noqa: F401
from cdra_ray.actors.ranks import rank0_result as _rank0_result

ALL_RANKS = ("train_on_groups", "save_state", "load_state", "save_policy", "incarnation")
ALL_RANKS_UNDER_ZERO3 = ("export_weights", "sequence_logprobs", "broadcast_weights")
RANK0_ONLY = ("policy_version", "connect_weight_sync")


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
        kill_ranks(self.ranks, self.placement)
        self.placement = None


def start_learner_group(settings, *, num_ranks: int, num_cpus: float, num_gpus: float, env_vars: dict[str, str],
                        strategy: str = "STRICT_PACK", resources: dict | None = None) -> LearnerGroup:
    """Place ``num_ranks`` learner actors, rendezvous them and build every rank's DeepSpeed engine.
    ``resources``: custom resources (``learner.resources``) each rank's bundle asks for."""
    from cdra_ray.actors.shells import LearnerActor

    ranks, placement = place_ranks(LearnerActor, what="learner", num_ranks=num_ranks, num_cpus=num_cpus,
                                   num_gpus=num_gpus, env_vars=env_vars, strategy=strategy, resources=resources,
                                   ranks_key="learner.num_ranks", gpus_key="learner.num_gpus")
    group = LearnerGroup(ranks, placement, zero_stage=settings.zero_stage)
    try:
        rendezvous(ranks, settings)
    except BaseException:
        group.kill()
        raise
    return group
