"""The reference policy sharded over ``learner.reference_num_ranks`` Ray actors, behind one handle-like object.

The driver calls ``reference.annotate_group.remote(group_ref)`` once per group and ``reference.incarnation.remote()``
to watch it, exactly as on the single :class:`~cdra_ray.actors.shells.ReferenceActor`. Here:

- ``annotate_group`` goes to a front actor (no CPUs) that batches the streamed calls as the single reference does
  (:class:`~cdra_ray.actors.reference_service.ReferenceService`) and sends each batch to every rank
  (:class:`RankFanout`): each rank computes its contiguous share of the groups on its ZeRO-3 partition
  (:class:`~cdra_ray.learner.reference_sharded.ShardedReferencePolicy`), and the shares, concatenated in rank
  order, are the batch's results in its own order;
- ``incarnation`` asks the front and every rank: a dead rank is Ray's actor-death error, which the driver takes as
  the reference's death, and the ranks are never restarted (a rank cannot rejoin its process group), so the run
  stops with that error instead of hanging. A rank that fails inside a batch fails the batch: the other ranks get
  :data:`~cdra_ray.actors.ranks.GRACE_S` seconds to leave their collectives, then all ranks are killed.

Placement is the learner's: one bundle of ``learner.num_cpus`` CPUs, ``learner.reference_num_gpus`` GPUs and the
``learner.resources`` custom resources per rank, in a placement group with ``learner.placement_strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from cdra_ray.actors.ranks import gather_all, kill_ranks, place_ranks, rank0_result, rendezvous


class RankFanout:
    """``logprobs(groups)`` of the whole reference, computed by every rank on its share of the groups."""

    def __init__(self, ranks: list):
        self.ranks = ranks

    def logprobs(self, groups: list) -> list:
        groups_ref = ray.put(groups)  # one copy in the object store, read by every rank
        per_rank = gather_all([rank.share_logprobs.remote(groups_ref) for rank in self.ranks], self.ranks)
        values = [v for share in per_rank for v in share]
        if len(values) != len(groups):
            raise RuntimeError(f"the reference ranks returned {len(values)} results for {len(groups)} groups")
        return values


@dataclass
class _Call:
    remote: object


class ReferenceGroup:
    """The front actor and the ranks of a sharded reference (see the module docstring)."""

    def __init__(self, front, ranks: list, placement=None):
        self.front, self.ranks, self.placement = front, ranks, placement
        self.annotate_group = _Call(lambda group: self.front.annotate_group.remote(group))
        self.incarnation = _Call(self._incarnation)

    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    def _incarnation(self):
        """The front's token, once every rank answered too (a dead rank fails it)."""
        actors = [self.front, *self.ranks]
        return rank0_result.remote([a.incarnation.remote() for a in actors], actors, [])

    def kill(self) -> None:
        if self.front is not None:
            ray.kill(self.front)
        kill_ranks(self.ranks, self.placement)
        self.placement = None


def start_reference_group(model_dir: str, options: dict, *, num_ranks: int, num_cpus: float, num_gpus: float,
                          env_vars: dict[str, str], strategy: str = "STRICT_PACK", resources: dict | None = None,
                          max_concurrency: int = 64) -> ReferenceGroup:
    """Place ``num_ranks`` reference ranks, rendezvous them, load every rank's partition, start the front."""
    from cdra_ray.actors.shells import ReferenceFrontActor, ReferenceRankActor

    ranks, placement = place_ranks(ReferenceRankActor, what="reference", num_ranks=num_ranks, num_cpus=num_cpus,
                                   num_gpus=num_gpus, env_vars=env_vars, strategy=strategy, resources=resources,
                                   ranks_key="learner.reference_num_ranks", gpus_key="learner.reference_num_gpus")
    group = ReferenceGroup(None, ranks, placement)
    try:
        rendezvous(ranks, model_dir, options)
        group.front = ReferenceFrontActor.options(num_cpus=0, max_concurrency=max_concurrency, max_restarts=0,
                                                  runtime_env={"env_vars": env_vars}).remote(ranks)
        ray.get(group.front.__ray_ready__.remote())
    except BaseException:
        group.kill()
        raise
    return group
