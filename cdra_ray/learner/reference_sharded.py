"""The frozen reference policy as one ZeRO-3 partition per rank, for a model no single device holds.

Each of ``learner.reference_num_ranks`` processes joins one torch.distributed group (gloo on CPU, nccl on cuda)
and loads the model under ``deepspeed.zero.Init`` (transformers does this while a
``HfDeepSpeedConfig`` with ZeRO stage 3 is alive), so every rank keeps about 1/N of each parameter and no rank
ever holds the full model. ``deepspeed.initialize`` without an optimizer then wraps it in ZeRO-3's inference
engine (``DeepSpeedZeRoOffload``): every forward gathers each layer's parameters from all ranks and frees them.

The groups of a call are split data-parallel (:func:`reference_shares`): every rank receives all of them, computes
the log-probs of its contiguous share, and runs one-token padding forwards up to the busiest rank's count, since
the parameter gathers are collectives that must pair up. Shared-prompt forwards are off here: they run two
forwards per group, so a rank's count of forwards would depend on its groups and the collectives would not pair up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from cdra_ray.engines.catalog import resolve_dtype
from cdra_ray.learner.data_parallel import rank_share
from cdra_ray.learner.reference import ReferencePolicy
from cdra_ray.messages import Group


def reference_shares(rows_per_group: Sequence[int], world_size: int,
                     micro_batch_size: int) -> list[tuple[list[int], int]]:
    """Per rank: (indices of its groups, one-token padding forwards it runs after its own).

    Groups are shared contiguously, sizes differing by at most one group; a rank's forwards are its micro-batches
    of ``micro_batch_size`` rows, and the padding brings every rank to the busiest rank's count."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    shares = [rank_share(range(len(rows_per_group)), r, world_size) for r in range(world_size)]
    forwards = [-(-sum(rows_per_group[g] for g in share) // micro_batch_size) for share in shares]
    return [(share, max(forwards) - count) for share, count in zip(shares, forwards)]


def zero3_inference_config(dtype: str, world_size: int) -> dict:
    """DeepSpeed config of a ZeRO-3 engine without optimizer (inference only: nothing is trained)."""
    dtype = resolve_dtype(dtype)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "train_batch_size": world_size, "zero_optimization": {"stage": 3},
              "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
    elif dtype == "float16":
        config["fp16"] = {"enabled": True}
    return config


class ShardedReferencePolicy(ReferencePolicy):
    """One rank's part of the reference: its ZeRO-3 partition of the weights and its share of each call's groups.

    The process group's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is set by the caller, as for a
    learner rank; ``options`` are :class:`ReferencePolicy`'s keywords (``share_prompt_forward`` is forced off)."""

    def __init__(self, model_dir: str | Path, *, dist_backend: str = "gloo", **options) -> None:
        from cdra_ray.learner.engine import init_distributed, world_size

        device = options.get("device", "cpu")
        os.environ.setdefault("DS_ACCELERATOR", device)
        init_distributed(dist_backend)
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        self.world_size = world_size()
        self.rank = torch.distributed.get_rank()
        ds_config = zero3_inference_config(options.get("dtype", "float32"), self.world_size)
        self._hf_ds_config = HfDeepSpeedConfig(ds_config)  # while alive, from_pretrained loads under zero.Init
        super().__init__(model_dir, **{**options, "share_prompt_forward": False})
        # True when zero.Init partitioned each parameter as it was created (no rank held the full model)
        self.loaded_partitioned = all(hasattr(p, "ds_id") for p in self.model.parameters())
        engine, _, _, _ = deepspeed.initialize(model=self.model, config=ds_config, dist_init_required=False)
        engine.eval()
        self.model = engine

    def partition_numel(self) -> tuple[int, int]:
        """(parameter elements this rank holds, elements of the full model)."""
        params = list(self.model.module.parameters())
        return sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)

    @torch.no_grad()  # not inference_mode: ZeRO-3 swaps each parameter's storage in and out around a forward
    def share_logprobs(self, groups: list[Group]) -> list[torch.Tensor]:
        """This rank's share of ``groups`` (the same list on every rank): their log-probs in order, after the
        padding forwards that keep this rank's collectives paired with the others'."""
        shares = reference_shares([len(g.samples) for g in groups], self.world_size, self.micro_batch_size)
        mine, padding = shares[self.rank]
        values = self.compute([groups[i] for i in mine])
        for _ in range(padding):
            self.padding_forward()
        return values
