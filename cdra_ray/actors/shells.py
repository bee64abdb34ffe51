"""The Ray actors of a run: thin shells over the plain role classes.

Each shell builds its heavy objects (engine, model, DeepSpeed) inside the actor process and then *is* the plain
class, so the methods the driver calls are exactly the ones tested without Ray.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import ray

from cdra_ray.actors.environment import apply_granted_threads
from cdra_ray.actors.reference_service import ReferenceService
from cdra_ray.actors.reward_service import RewardService
from cdra_ray.actors.rollout_worker import RolloutWorker
from cdra_ray.actors.shared_weights import pack_weights
from cdra_ray.logs import configure_actor_logs


class Incarnation:
    """A token drawn when the actor's process starts: the driver tells a restarted actor from a live one by it."""

    def incarnation(self) -> str:
        if not hasattr(self, "_incarnation"):  # drawn on first ask: a restarted actor is a new instance
            self._incarnation = uuid.uuid4().hex
        return self._incarnation


@ray.remote
class RolloutActor(RolloutWorker, Incarnation):
    def __init__(self, spec, worker_options: dict):
        configure_actor_logs("rollout")
        super().__init__(spec.build(apply_granted_threads(spec.num_threads, "rollout")), **worker_options)


@ray.remote
class RewardActor(RewardService, Incarnation):
    def __init__(self, spec, entry, options):
        # entry: the reward kind's registry entry (cdra_ray.registry.Entry), options: its checked options
        configure_actor_logs("reward")
        threads = apply_granted_threads(spec.num_threads, "reward")
        if entry.traits.get("needs_engine", True):  # judges generate text through an engine
            model = entry.create(options, engine=spec.build(threads))
        else:  # classification heads and rules load what they need from the model directory
            model = entry.create(options, model_dir=spec.model_dir)
        super().__init__(model)


@ray.remote
class ReferenceActor(ReferenceService, Incarnation):
    def __init__(self, model_dir: str, options: dict):
        configure_actor_logs("reference")
        from cdra_ray.learner.reference import ReferencePolicy

        threads = apply_granted_threads(options.get("num_threads", 1), "reference")
        super().__init__(ReferencePolicy(model_dir, **{**options, "num_threads": threads}))


class ProcessGroupRank(Incarnation):
    """One rank of a torch.distributed group started in two steps: the actor starts empty, rank 0 picks the
    rendezvous endpoint on its own node (:meth:`endpoint`), then every rank joins with it (:meth:`join`) in its
    ``start`` (:mod:`cdra_ray.actors.ranks` drives both steps)."""

    def __init__(self, role: str, rank: int, world_size: int):
        configure_actor_logs(role if rank == 0 else f"{role}_rank{rank}")
        self.rank, self.world_size = rank, world_size

    def endpoint(self) -> tuple[str, int]:
        """(address, port) of the process group's store, free on this actor's node."""
        from cdra_ray.learner.weight_sync_gpu import rendezvous_endpoint

        return rendezvous_endpoint()

    def join(self, master_address: str, master_port: int) -> None:
        """The environment torch.distributed reads when this process joins the group."""
        import os

        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so every rank's device is local index 0.
        os.environ.update({"RANK": str(self.rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(self.world_size),
                           "MASTER_ADDR": master_address, "MASTER_PORT": str(master_port)})


@ray.remote
class LearnerActor(ProcessGroupRank):
    """One rank of the learner: a thin shell over :class:`~cdra_ray.learner.learner.Learner`.

    Built in two steps because the ranks must start DeepSpeed together: the actor starts empty, rank 0 picks
    the rendezvous endpoint on its own node (:meth:`endpoint`), then every rank gets it in :meth:`start`.
    :class:`~cdra_ray.actors.learner_group.LearnerGroup` does this and decides which ranks each call reaches.
    DeepSpeed is imported inside the actor (its ops do not pickle).
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__("learner", rank, world_size)
        self.learner = None

    def start(self, settings, master_address: str, master_port: int) -> None:
        self.join(master_address, master_port)
        from cdra_ray.learner.learner import Learner

        threads = apply_granted_threads(settings.num_threads, "learner")
        self.learner = Learner(dataclasses.replace(settings, num_threads=threads))

    def train_on_groups(self, groups):
        return self.learner.train_on_groups(groups)

    def export_weights(self):
        """Rank 0: the packed weights. Other ranks (called under ZeRO-3 only) join the gathers, return None."""
        weights = self.learner.export_weights(copy=False)
        # Views, not copies: Ray serializes the return value before this (serial) actor trains again.
        return pack_weights(weights.items()) if self.rank == 0 else None

    def save_policy(self, path: str):
        from cdra_ray.driver.checkpointing import write_policy

        return write_policy(self.learner, Path(path))

    def save_state(self, path: str):
        from cdra_ray.driver.checkpointing import write_learner_state

        return write_learner_state(self.learner, Path(path))

    def load_state(self, path: str) -> int:
        from cdra_ray.driver.checkpointing import read_learner_state

        return read_learner_state(self.learner, Path(path))

    def sequence_logprobs(self, prompt_ids, continuation_ids):
        """The learner's own log-probs of a fixed continuation (to check that a weight sync really landed)."""
        import torch

        from cdra_ray.learner.logprobs import token_logprobs

        ids = torch.tensor([list(prompt_ids) + list(continuation_ids)], device=self.learner.device)
        with torch.no_grad():
            logits = self.learner.model(input_ids=ids).logits
        logprobs = token_logprobs(logits[:, :-1], ids[:, 1:])[0]
        return logprobs[len(prompt_ids) - 1:].tolist()

    def policy_version(self) -> int:
        return self.learner.policy_version

    def connect_weight_sync(self, workers: list, world_sizes: list[int]) -> None:
        """GPU path: join one NCCL group with every rollout engine's workers (rank 0 = this learner, which
        binds the rendezvous store: address and port are chosen here, on the learner's node)."""
        import torch

        from cdra_ray.actors.publishers import RayActorSyncClient
        from cdra_ray.learner.weight_sync_gpu import NcclWeightSync, rendezvous_endpoint

        address, port = rendezvous_endpoint()
        self.sync = NcclWeightSync([RayActorSyncClient(w) for w in workers], world_sizes,
                                   master_address=address, master_port=port)
        self.sync.connect(self.learner.weight_source(getattr(torch, self.learner.settings.dtype)))

    def broadcast_weights(self, policy_version: int) -> None:
        """Rank 0 sends; other ranks (called under ZeRO-3 only) take part in each parameter's gather."""
        if self.rank == 0:
            self.sync.send(policy_version)
            return
        import torch

        for _ in self.learner.weight_source(getattr(torch, self.learner.settings.dtype)):
            pass


@ray.remote
class ReferenceRankActor(ProcessGroupRank):
    """One rank of a sharded reference (``learner.reference_num_ranks`` > 1): a thin shell over
    :class:`~cdra_ray.learner.reference_sharded.ShardedReferencePolicy`, started in two steps like a learner rank
    (:mod:`cdra_ray.actors.ranks`). :class:`~cdra_ray.actors.reference_group.ReferenceGroup` drives the ranks."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__("reference", rank, world_size)
        self.policy = None

    def start(self, model_dir: str, options: dict, master_address: str, master_port: int) -> None:
        self.join(master_address, master_port)
        from cdra_ray.learner.reference_sharded import ShardedReferencePolicy

        threads = apply_granted_threads(options.get("num_threads", 1), f"reference rank {self.rank}")
        backend = "nccl" if options.get("device", "cpu") == "cuda" else "gloo"
        self.policy = ShardedReferencePolicy(model_dir, dist_backend=backend, **{**options, "num_threads": threads})

    def share_logprobs(self, groups):
        return self.policy.share_logprobs(groups)

    def partition_numel(self) -> tuple[int, int]:
        return self.policy.partition_numel()

    def loaded_partitioned(self) -> bool:
        return self.policy.loaded_partitioned


@ray.remote
class ReferenceFrontActor(ReferenceService, Incarnation):
    """The sharded reference's entry point: batches the streamed ``annotate_group`` calls as the single
    reference actor does and computes each batch on every rank
    (:class:`~cdra_ray.actors.reference_group.RankFanout`)."""

    def __init__(self, ranks: list):
        configure_actor_logs("reference_front")
        from cdra_ray.actors.reference_group import RankFanout

        super().__init__(RankFanout(ranks))
