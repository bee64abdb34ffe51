"""Learner side of the NCCL weight broadcast to vLLM engines (the GPU path).

On GPU machines the new weights go from the learner's rank 0 straight into every vLLM worker's GPU memory
over NCCL, instead of through Ray's object store (the CPU path: ``Learner.export_weights`` ->
``GenerationEngine.load_weights``). vLLM 0.32 ships both halves of this protocol in
``vllm.distributed.weight_transfer``: an engine built with ``weight_transfer_config={"backend": "nccl"}``
exposes ``init_weight_transfer_engine / start_weight_update / update_weights / finish_weight_update``
(on ``AsyncLLM``, as HTTP routes, or through ``LLM.collective_rpc`` with the same names), and
``NCCLTrainerWeightTransferEngine`` drives them from the trainer. We use that engine and add what it leaves
to the caller:

- a weight source over the DeepSpeed model that gathers each ZeRO-3 parameter only while it is sent and casts
  to the engine's dtype (vLLM checks the dtype of what arrives);
- several independent vLLM engines (one per rollout worker). vLLM's trainer engine hands every worker the
  same ``rank_offset=1``, which is right for one engine (its workers add their own TP/DP rank) but collides
  across engines; :class:`FanOutSyncClient` rewrites the offset per engine and calls the engines concurrently
  (each one blocks inside the NCCL rendezvous / receive until all ranks arrive).

- failure handling: a send that fails half-way tells every engine to abort (each releases its engine lock and
  refuses further work, since its weights are half-new), tears the group down and raises; vLLM's own trainer
  engine would leave the engines locked and the caller hanging on the next request;
- the rendezvous endpoint chosen in the learner's process (:func:`rendezvous_endpoint`), on the node whose
  store binds it.

Rank layout of the transfer group (rank 0 = learner, then each engine's TP x DP workers in turn)::

    [ 0 | 1 .. w_0 | w_0+1 .. w_0+w_1 | ... ]      world_size = 1 + sum(w_k)

The pure parts (the ordered plan of (name, dtype, shape), the update payload, the rank offsets, the worker
init payloads) are unit-tested on CPU; the broadcast itself needs CUDA and NCCL.
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch

DEFAULT_PACKED_BUFFER_BYTES = 1024 * 1024 * 1024  # vLLM's default chunk for packed broadcasts (1 GiB)
DEFAULT_PACKED_NUM_BUFFERS = 2
ABORT_TIMEOUT_S = 30.0  # how long a failed send waits for the engines to acknowledge the abort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """What the receiving workers allocate for one parameter before the broadcast fills it."""

    name: str  # HF parameter name
    dtype: torch.dtype  # dtype on the wire (= the engine's model dtype)
    shape: tuple[int, ...]  # full (unpartitioned) shape


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's full shape, also under ZeRO-3 (where ``param.shape`` is the empty local partition)."""
    ds_shape = getattr(param, "ds_shape", None)
    return tuple(int(d) for d in (ds_shape if ds_shape is not None else param.shape))


def broadcast_plan(
    named_params: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None
) -> list[TensorSpec]:
    """The ordered list the trainer will send: one entry per parameter, in ``named_parameters`` order.

    ``dtype`` None keeps each parameter's own dtype. Tied parameters appear once (``named_parameters``
    already skips the duplicate; vLLM re-ties on load). Names must be unique: a duplicate would make the
    workers split the stream differently from the sender.
    """
    plan: list[TensorSpec] = []
    seen: set[str] = set()
    for name, param in named_params:
        if name in seen:
            raise ValueError(f"broadcast_plan: parameter {name!r} appears twice")
        seen.add(name)
        plan.append(TensorSpec(name, dtype if dtype is not None else param.dtype, full_shape(param)))
    if not plan:
        raise ValueError("broadcast_plan: the model has no parameters to send")
    return plan


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the form vLLM's update info carries)."""
    return str(dtype).removeprefix("torch.")


def update_info(plan: Sequence[TensorSpec]) -> dict[str, list]:
    """The per-round payload for ``update_weights`` (vLLM's ``NCCLWeightTransferUpdateInfo`` fields)."""
    return {
        "names": [spec.name for spec in plan],
        "dtype_names": [dtype_name(spec.dtype) for spec in plan],
        "shapes": [list(spec.shape) for spec in plan],
    }


def payload_bytes(plan: Sequence[TensorSpec]) -> int:
    """Bytes one full sync moves (for logs and timing)."""
    return sum(torch.Size(spec.shape).numel() * torch.empty((), dtype=spec.dtype).element_size() for spec in plan)


def rank_offsets(engine_world_sizes: Sequence[int]) -> tuple[list[int], int]:
    """First transfer-group rank of each engine's workers, and the group's world size (learner = rank 0)."""
    if not engine_world_sizes:
        raise ValueError("rank_offsets: need at least one engine")
    offsets, next_rank = [], 1
    for k, size in enumerate(engine_world_sizes):
        if size < 1:
            raise ValueError(f"rank_offsets: engine {k} has world size {size}; it must be >= 1 (TP x PP x DP)")
        offsets.append(next_rank)
        next_rank += size
    return offsets, next_rank


def worker_init_infos(
    master_address: str,
    master_port: int,
    engine_world_sizes: Sequence[int],
    *,
    packed: bool = True,
    packed_buffer_size_bytes: int = DEFAULT_PACKED_BUFFER_BYTES,
    packed_num_buffers: int = DEFAULT_PACKED_NUM_BUFFERS,
) -> list[dict[str, Any]]:
    """One ``init_weight_transfer_engine`` payload per engine (vLLM's ``NCCLWeightTransferInitInfo`` fields).

    The packed wire parameters must match the trainer's, which is why they travel in the worker's init info.
    """
    if not master_address:
        raise ValueError("worker_init_infos: master_address is empty")
    if not 0 < master_port < 65536:
        raise ValueError(f"worker_init_infos: master_port {master_port} is not a TCP port")
    offsets, world_size = rank_offsets(engine_world_sizes)
    return [
        {
            "master_address": master_address,
            "master_port": int(master_port),
            "rank_offset": offset,
            "world_size": world_size,
            "packed": packed,
            "packed_buffer_size_bytes": packed_buffer_size_bytes,
            "packed_num_buffers": packed_num_buffers,
        }
        for offset in offsets
    ]


def free_port_all_interfaces() -> int:
    """A TCP port free on every interface of *this* host a moment ago (the rendezvous store binds 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def rendezvous_endpoint(node_ip: str | None = None) -> tuple[str, int]:
    """(address, port) of the transfer group's store, chosen *in the learner's process*, on its node.

    Rank 0 (the learner) binds the store; the engines connect to it. Picking the port anywhere else (e.g.
    in the driver, on another host) tests the wrong machine. ``node_ip`` None = Ray's address of this node.
    """
    if node_ip is None:
        import ray

        node_ip = ray.util.get_node_ip_address()
    return node_ip, free_port_all_interfaces()


class SyncClient(Protocol):
    """One vLLM engine's weight-sync control plane (vLLM's ``VLLMWeightSyncClient`` protocol)."""

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None: ...

    def start_weight_update(self) -> None: ...

    def update_weights(self, update_info: dict[str, Any]) -> None: ...

    def finish_weight_update(self, weight_version: str | None = None) -> None: ...

    # optional: ``abort_weight_update(reason)`` releases an engine after a failed transfer (see RolloutWorker)


class FanOutSyncClient:
    """Presents several vLLM engines as one ``VLLMWeightSyncClient``, each at its own rank offset.

    Every call goes to all engines at once (threads): the init and the update block inside NCCL until every
    rank has arrived, so calling the engines one after another would deadlock.
    """

    def __init__(self, clients: Sequence[SyncClient], engine_world_sizes: Sequence[int]) -> None:
        if len(clients) != len(engine_world_sizes):
            raise ValueError(f"FanOutSyncClient: {len(clients)} clients but {len(engine_world_sizes)} world sizes")
        self.clients = list(clients)
        self.offsets, self.world_size = rank_offsets(engine_world_sizes)
        self.weight_version: str | None = None  # sent with finish_weight_update when set

    def _all(self, call: Callable[[int, SyncClient], None]) -> None:
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            futures = [pool.submit(call, k, client) for k, client in enumerate(self.clients)]
            for future in futures:
                future.result()

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if init_info.get("world_size") != self.world_size:
            raise ValueError(f"FanOutSyncClient: init_info world_size {init_info.get('world_size')} != "
                             f"{self.world_size} (1 learner + the engines' workers)")
        self._all(lambda k, c: c.init_weight_transfer_engine({**init_info, "rank_offset": self.offsets[k]}))

    def start_weight_update(self) -> None:
        self._all(lambda k, c: c.start_weight_update())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all(lambda k, c: c.update_weights(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = weight_version if weight_version is not None else self.weight_version
        self._all(lambda k, c: c.finish_weight_update(version))

    def abort_weight_update(self, reason: str, timeout_s: float = ABORT_TIMEOUT_S) -> list[str]:
        """Tell every engine the transfer failed; bounded, never raises. Returns the engines it could not reach.

        Called while some engines may still block inside the NCCL receive, so it must not wait for them:
        each abort runs on its own thread and the pool is not joined.
        """
        pool = ThreadPoolExecutor(max_workers=len(self.clients))
        futures = {}
        for k, client in enumerate(self.clients):
            abort = getattr(client, "abort_weight_update", None)
            if abort is not None:
                futures[pool.submit(abort, reason)] = k
        done, _ = wait(futures, timeout=timeout_s)
        pool.shutdown(wait=False)
        unreached = []
        for future, k in futures.items():
            error = future.exception() if future in done else TimeoutError(f"no answer in {timeout_s} s")
            if error is not None:
                unreached.append(f"engine {k}: {error}")
        for line in unreached:
            log.error("weight sync abort not acknowledged by %s", line)
        return unreached


class GatheredWeightSource:
    """vLLM ``WeightSource`` over a (DeepSpeed-wrapped) HF model: full tensors, cast to the wire dtype.

    Duck-typed (``metadata()`` + iteration, all vLLM's NCCL trainer engine uses) so this module imports
    without vLLM. Under ZeRO-3 each parameter is gathered only while it is being sent; every learner rank
    must iterate (the gather is a collective).
    """

    def __init__(self, model: torch.nn.Module, *, dtype: torch.dtype | None = None, zero3: bool = False) -> None:
        self.model = model
        self.dtype = dtype
        self.zero3 = zero3

    def plan(self) -> list[TensorSpec]:
        return broadcast_plan(self.model.named_parameters(), dtype=self.dtype)

    def metadata(self) -> list[Any]:
        from vllm.distributed.weight_transfer import ParamMeta

        return [ParamMeta(spec.name, spec.dtype, spec.shape) for spec in self.plan()]

    def held_names(self) -> None:
        return None  # every rank describes, and helps gather, the whole model

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        for name, param in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None, enabled=self.zero3):
                tensor = param.data
                if self.dtype is not None and tensor.dtype != self.dtype:
                    tensor = tensor.to(self.dtype)
                yield name, tensor.contiguous()


class NcclWeightSync:
    """Connect once, then push the learner's weights to all engines after every update.

    ``clients`` are the engines' control planes (e.g. the rollout actors forwarding to
    ``LLM.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": ...})`` and friends, or vLLM's
    ``RayVLLMWeightSyncClient`` / ``HTTPVLLMWeightSyncClient`` per engine); ``engine_world_sizes`` their
    TP x PP x DP sizes. ``rank`` is this learner process's rank (0 sends; other ranks only join the ZeRO-3
    gathers). Callers must stop generation on the engines while :meth:`send` runs.
    """

    def __init__(
        self,
        clients: Sequence[SyncClient],
        engine_world_sizes: Sequence[int],
        *,
        master_address: str,
        master_port: int,
        rank: int = 0,
        packed: bool = True,
        packed_buffer_size_bytes: int = DEFAULT_PACKED_BUFFER_BYTES,
        packed_num_buffers: int = DEFAULT_PACKED_NUM_BUFFERS,
    ) -> None:
        self.client = FanOutSyncClient(clients, engine_world_sizes)
        self.master_address = master_address
        self.master_port = master_port
        self.rank = rank
        self.packed = packed
        self.packed_buffer_size_bytes = packed_buffer_size_bytes
        self.packed_num_buffers = packed_num_buffers
        self._engine = None

    def trainer_init_kwargs(self) -> dict[str, Any]:
        """Arguments of vLLM's ``NCCLTrainerInitInfo`` for this learner rank."""
        return {
            "master_address": self.master_address,
            "master_port": self.master_port,
            "world_size": self.client.world_size,
            "rank": self.rank,
            "packed": self.packed,
            "packed_buffer_size_bytes": self.packed_buffer_size_bytes,
            "packed_num_buffers": self.packed_num_buffers,
        }

    def connect(self, source: GatheredWeightSource) -> None:
        """Rendezvous with every engine worker (NCCL communicator creation on all ranks)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        if not torch.cuda.is_available():
            raise RuntimeError("NcclWeightSync needs CUDA; on CPU use Learner.export_weights + load_weights")
        self._engine = WeightTransferTrainerFactory.trainer_init(
            init_info=NCCLTrainerInitInfo(**self.trainer_init_kwargs()), client=self.client, source=source
        )

    def send(self, weight_version: int | str | None = None) -> None:
        """Broadcast every parameter (start -> update concurrently with the broadcast -> finish).

        A failure half-way is final for this group: the engines are told to abort (which frees their locks and
        makes them refuse further work), the communicator is torn down, and the error is raised, never a hang
        on this side. Reconnecting needs fresh engines (restart the run from its checkpoint).
        """
        if self._engine is None:
            raise RuntimeError("NcclWeightSync.send before connect() (or after a failed send closed the group)")
        self.client.weight_version = None if weight_version is None else str(weight_version)
        try:
            self._engine.send_weights()
        except BaseException as err:
            reason = f"learner-side weight broadcast of version {weight_version} failed: {type(err).__name__}: {err}"
            self.client.abort_weight_update(reason)
            try:
                self.close()
            except Exception:  # the group is gone either way; the broadcast's error is the one to report
                log.exception("closing the weight transfer group after a failed send")
            raise RuntimeError(reason) from err

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
