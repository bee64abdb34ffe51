"""One DeepSpeed engine around an HF model: the construction the CDPA learner uses, shared with SFT.

Joins (or creates) the process group with :func:`~cdra_ray.learner.learner.init_distributed`, builds the config
with :func:`~cdra_ray.learner.deepspeed_config.build_deepspeed_config` (torch AdamW, gradient accumulation
decided by the caller's ``step()`` calls) and calls ``deepspeed.initialize``. DeepSpeed is imported inside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cdra_ray.learner.deepspeed_config import build_deepspeed_config


@dataclass(frozen=True)
class EngineSettings:
    zero_stage: int = 0
    micro_batch_size: int = 1
    dtype: str = "float32"  # float32 | bfloat16 | float16
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
    from cdra_ray.learner.learner import DTYPES, init_distributed

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
        world_size=int(os.environ.get("WORLD_SIZE", "1")), max_grad_norm=s.max_grad_norm,
        precision=DTYPES[s.dtype], lr=s.lr, betas=s.betas, adam_eps=s.adam_eps, weight_decay=s.weight_decay,
        offload_optimizer=s.offload_optimizer, offload_params=s.offload_params,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
        lr_scheduler=lr_scheduler, dist_init_required=False,
    )
    return engine, ds_config
