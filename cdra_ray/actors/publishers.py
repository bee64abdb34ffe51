"""Weight publishers: how the learner's new weights reach every rollout engine after an update."""

from __future__ import annotations

import ray


class RayActorSyncClient:
    """vLLM's weight-sync client protocol over a rollout actor handle (blocking calls, one per engine)."""

    def __init__(self, handle):
        self.handle = handle

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        ray.get(self.handle.init_weight_transfer_engine.remote(init_info))

    def start_weight_update(self) -> None:
        ray.get(self.handle.start_weight_update.remote())

    def update_weights(self, update_info: dict) -> None:
        ray.get(self.handle.update_weights.remote(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        ray.get(self.handle.finish_weight_update.remote(weight_version))


class ObjectStorePublisher:
    """Weights through Ray's object store: learner -> packed CPU tensors (shared memory, see
    :mod:`~cdra_ray.actors.shared_weights`) -> every engine's ``load_weights``."""

    def __init__(self, learner, workers: list):
        self.learner, self.workers = learner, workers

    def publish(self, policy_version: int, wait: bool, workers: list[int] | None = None) -> None:
        """Send the weights to every engine, or to ``workers`` (indices) only: a restarted one catching up."""
        weights = self.learner.export_weights.remote()
        targets = self.workers if workers is None else [self.workers[i] for i in workers]
        loads = [w.load_weights.remote(weights, policy_version) for w in targets]
        if wait:
            ray.get(loads)


class NcclPublisher:
    """Weights over NCCL from the learner's GPU straight into every vLLM worker (vLLM's weight transfer)."""

    def __init__(self, learner, workers: list, tensor_parallel_size: int):
        from cdra_ray.learner.learner import free_port

        self.learner = learner
        ray.get(learner.connect_weight_sync.remote(workers, [tensor_parallel_size] * len(workers), free_port()))

    def publish(self, policy_version: int, wait: bool, workers: list[int] | None = None) -> None:
        if workers is not None:  # a restarted engine would have to rejoin the NCCL group: not supported
            raise RuntimeError(f"rollout workers {workers} were restarted, but rollout.weight_sync=nccl cannot add "
                               "an engine back into its NCCL group; use rollout.weight_sync=object_store for runs "
                               "that must survive rollout worker restarts")
        done = self.learner.broadcast_weights.remote(policy_version)
        if wait:
            ray.get(done)


def create_publisher(weight_sync: str, learner, workers: list, tensor_parallel_size: int):
    """``rollout.weight_sync``: ``object_store`` (CPU and GPU) or ``nccl`` (GPU)."""
    if weight_sync == "nccl":
        return NcclPublisher(learner, workers, tensor_parallel_size)
    return ObjectStorePublisher(learner, workers)
