"""Ray actors that form one torch.distributed group: their placement, rendezvous and joint results.

Shared by the learner's ranks (:mod:`cdra_ray.actors.learner_group`) and the sharded reference's
(:mod:`cdra_ray.actors.reference_group`). A rank actor class takes ``(rank, world_size)``, answers ``endpoint()``
with a free ``(address, port)`` on its own node (rank 0's becomes the group's rendezvous) and ``start(*args,
address, port)`` builds its part of the model.

A call on several ranks is awaited by :func:`gather_all`: when one rank fails the others may be blocked in a
collective that will never complete, so they get :data:`GRACE_S` seconds, then the ranks still running are
killed and the first error is raised (a dead rank surfaces as Ray's actor-death error, never as a hang).
"""

from __future__ import annotations

from typing import Any, Sequence

import ray

GRACE_S = 30.0  # how long the other ranks may take to finish after one rank failed
PLACEMENT_TIMEOUT_S = 300.0


def gather_all(refs: Sequence, ranks: Sequence, also: Sequence = ()) -> list:
    """Every result of ``refs`` (after the ``also`` refs of earlier calls finished too); on the first failure,
    kill ``ranks`` if some call is still running :data:`GRACE_S` seconds later, then raise the error."""
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
    return ray.get(list(refs))


@ray.remote(num_cpus=0)
def rank0_result(refs: list, ranks: list, also: list) -> Any:
    """A task waiting for every rank's result (and the ``also`` refs of earlier calls); returns rank 0's."""
    return gather_all(refs, ranks, also)[0]


def rank_bundle(num_cpus: float, num_gpus: float, resources: dict | None) -> tuple[dict, dict]:
    """(one rank's placement-group bundle, its custom resources as ``.options(resources=)``)."""
    custom = {name: float(amount) for name, amount in (resources or {}).items()}
    bundle = {**{k: v for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}, **custom}
    return bundle, custom


def place_ranks(actor_class, *, what: str, num_ranks: int, num_cpus: float, num_gpus: float,
                env_vars: dict[str, str], strategy: str, resources: dict | None, ranks_key: str,
                gpus_key: str) -> tuple[list, Any]:
    """``num_ranks`` actors of ``actor_class`` in one placement group (one bundle per rank): ``(ranks, pg)``.
    ``what``, ``ranks_key`` and ``gpus_key`` name the role and its config keys in the error when it cannot be
    placed."""
    from ray.util import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle, custom = rank_bundle(num_cpus, num_gpus, resources)
    placement = None
    if bundle:
        placement = placement_group([dict(bundle) for _ in range(num_ranks)], strategy=strategy)
        ready, _ = ray.wait([placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(placement)
            raise RuntimeError(
                f"cannot place {ranks_key}={num_ranks} {what} ranks of {bundle} each ({strategy}, "
                f"learner.placement_strategy) within {PLACEMENT_TIMEOUT_S:.0f} s: the cluster has "
                f"{ray.cluster_resources()}; lower {ranks_key} / {gpus_key} or add nodes")
    ranks = []
    for rank in range(num_ranks):
        scheduling = ({"scheduling_strategy": PlacementGroupSchedulingStrategy(placement, rank)}
                      if placement is not None else {})
        ranks.append(actor_class.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                         runtime_env={"env_vars": env_vars},
                                         **({"resources": custom} if custom else {}), **scheduling
                                         ).remote(rank, num_ranks))
    return ranks, placement


def rendezvous(ranks: Sequence, *args) -> None:
    """Rank 0 picks the group's address and port on its own node; every rank ``start(*args, address, port)``s."""
    address, port = ray.get(ranks[0].endpoint.remote())
    args = tuple(a if isinstance(a, ray.ObjectRef) else ray.put(a) for a in args)
    gather_all([r.start.remote(*args, address, port) for r in ranks], ranks)


def kill_ranks(ranks: Sequence, placement) -> None:
    for rank in ranks:
        ray.kill(rank)
    if placement is not None:
        from ray.util import remove_placement_group

        remove_placement_group(placement)
