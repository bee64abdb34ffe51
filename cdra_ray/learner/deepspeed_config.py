"""The DeepSpeed configuration dict of the learner, built from explicit arguments.

Pure (no DeepSpeed import), so it is unit-testable and the run config maps onto it in one place.
Choices that differ from DeepSpeed's defaults, and why:

- Optimizer: ``AdamW`` with ``torch_adam: true``. DeepSpeed's own Adam compiles a C++/CUDA op on first use
  (about 40 s on these CPU machines); torch's AdamW needs nothing compiled and is numerically the same update.
  With ZeRO-Offload DeepSpeed insists on its CPU Adam unless ``zero_force_ds_cpu_optimizer`` is false, so we set
  that too when offloading with torch's AdamW.
- ``managed_gradient_accumulation: false``: a learner batch holds a varying number of responses (groups of G,
  B groups), so the number of micro-batches per optimizer step varies. In this mode every ``backward`` only
  accumulates and every ``step()`` is the accumulation boundary, so the learner decides where a step ends
  instead of DeepSpeed counting to a fixed ``gradient_accumulation_steps``. The learner scales each
  micro-batch's loss itself (see ``Learner``); ``gradient_accumulation_steps`` here is nominal.
- ``steps_per_print`` very large: the driver logs its own metrics.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
OFFLOAD_DEVICES = ("none", "cpu")


def build_deepspeed_config(
    *,
    zero_stage: int,
    micro_batch_size: int,
    gradient_accumulation_steps: int = 1,
    world_size: int = 1,
    max_grad_norm: float | None = 1.0,
    precision: str = "fp32",
    lr: float = 1e-6,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    weight_decay: float = 0.0,
    torch_adam: bool = True,
    offload_optimizer: str = "none",
    offload_params: str = "none",
    overlap_comm: bool = False,
    managed_gradient_accumulation: bool = False,
) -> dict[str, Any]:
    """Return a DeepSpeed config dict; every argument is checked and a bad one is named in the error.

    ``max_grad_norm`` None or 0 disables clipping. ``offload_*`` is ``"none"`` or ``"cpu"``; parameter offload
    needs ZeRO stage 3, optimizer offload stage 1 or more.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if max_grad_norm is not None and max_grad_norm < 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0 or None = no clipping), got {max_grad_norm}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if adam_eps <= 0:
        raise ValueError(f"adam_eps must be > 0, got {adam_eps}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    for name, value in (("offload_optimizer", offload_optimizer), ("offload_params", offload_params)):
        if value not in OFFLOAD_DEVICES:
            raise ValueError(f"{name} must be one of {OFFLOAD_DEVICES}, got {value!r}")
    if offload_params != "none" and zero_stage != 3:
        raise ValueError(f"offload_params={offload_params!r} needs zero_stage 3, got zero_stage {zero_stage}")
    if offload_optimizer != "none" and zero_stage == 0:
        raise ValueError(f"offload_optimizer={offload_optimizer!r} needs zero_stage >= 1, got zero_stage 0")
    if overlap_comm and not managed_gradient_accumulation and zero_stage != 2:
        raise ValueError("overlap_comm with managed_gradient_accumulation=False is supported by DeepSpeed only "
                         f"with zero_stage 2, got zero_stage {zero_stage}")

    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero["contiguous_gradients"] = True
        zero["overlap_comm"] = overlap_comm
    if zero_stage == 3:
        # save_16bit_model / HF export gathers the full weights on rank 0
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": offload_optimizer}
    if offload_params != "none":
        zero["offload_param"] = {"device": offload_params}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "managed_gradient_accumulation": managed_gradient_accumulation,
        "gradient_clipping": float(max_grad_norm or 0.0),
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": [float(betas[0]), float(betas[1])],
                "eps": adam_eps,
                "weight_decay": weight_decay,
                "torch_adam": torch_adam,
                "adam_w_mode": True,
            },
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if torch_adam and offload_optimizer != "none":
        config["zero_force_ds_cpu_optimizer"] = False
    return config
