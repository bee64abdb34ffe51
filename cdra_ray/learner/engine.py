"""One DeepSpeed engine around an HF model: the construction the CDPA learner uses, shared with SFT.

Joins (or creates) the process group with :func:`init_distributed`, builds the config with
:func:`~cdra_ray.learner.deepspeed_config.build_deepspeed_config` (torch AdamW, gradient accumulation decided by
the caller's ``step()`` calls; ``train_batch_size`` counts every rank) and calls ``deepspeed.initialize``.
DeepSpeed is imported inside, so a Ray actor class wrapping a user of this module pickles.

Usable without a launcher: a single process sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT itself when they are
missing; the learner's Ray shell sets them for each of ``learner.num_ranks`` processes
(:mod:`cdra_ray.actors.learner_group`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cdra_ray.engines.catalog import resolve_dtype
from cdra_ray.learner.deepspeed_config import build_deepspeed_config

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def free_port() -> int:
    """A TCP port that was free a moment ago (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_distributed(backend: str) -> None:
    """Join (or create, as a world of one) the torch.distributed group DeepSpeed needs.

    Missing env vars are filled for a single process so no launcher (and no mpi4py) is needed; a launcher or
    the Ray shell that sets them for several ranks wins. DeepSpeed's shared-memory comm op is marked
    incompatible first: it would compile C++ for 25-40 s and is only a speed-up for multi-rank CPU all-reduce.
    """
    import importlib

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    importlib.import_module("deepspeed.ops").__compatible_ops__["deepspeed_shm_comm"] = False
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)


@dataclass(frozen=True)
class EngineSettings:
    zero_stage: int = 0
    micro_batch_size: int = 1
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (bfloat16 where this node computes it natively)
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    offload_optimizer: str = "none"
    offload_params: str = "none"
    device: str = "cpu"
    dist_backend: str = "gloo"


def create_deepspeed_engine(model: torch.nn.Module, s: EngineSettings,
                            lr_scheduler: Callable[[Any], Any] | None = None):
    """``(engine, ds_config)`` training the model's ``requires_grad`` parameters; ``lr_scheduler`` is a callable
    taking the optimizer (DeepSpeed steps it at every ``engine.step()`` and saves it in its checkpoints)."""
    os.environ.setdefault("DS_ACCELERATOR", s.device)
    init_distributed(s.dist_backend)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator().device_name()
    if accelerator != s.device:
        raise RuntimeError(f"device is {s.device!r} but DeepSpeed chose the {accelerator!r} accelerator "
                           f"(set DS_ACCELERATOR={s.device} before DeepSpeed is first imported)")
    ds_config = build_deepspeed_config(
        zero_stage=s.zero_stage, micro_batch_size=s.micro_batch_size,
        world_size=world_size(), max_grad_norm=s.max_grad_norm,
        precision=DTYPES[resolve_dtype(s.dtype)], lr=s.lr, betas=s.betas, adam_eps=s.adam_eps,
        weight_decay=s.weight_decay,
        offload_optimizer=s.offload_optimizer, offload_params=s.offload_params,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
        lr_scheduler=lr_scheduler, dist_init_required=False,
    )
    return engine, ds_config


def world_size() -> int:
    """Ranks of the process group (1 before it exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))
