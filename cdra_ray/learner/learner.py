"""The CDPA learner: a DeepSpeed engine that turns finished groups into one policy update.

One call of :meth:`Learner.train_on_groups` is one policy version::

    groups ─► build_batch ─► advantages (per group, registry estimator)
           ─► pi_old = the learner's own log-probs before the first gradient step
           ─► for each PPO epoch, for each optimizer step (mini-batch), for each micro-batch:
                  log pi_theta ─► cdpa_policy_loss (clip + beta*KL) ─► backward (scaled, see below)
              optimizer step (clipped grad norm)
           ─► policy_version += 1

How it departs from a textbook PPO loop, and why:

- pi_old is not a separate forward pass when there is exactly one optimizer step per batch
  (``ppo_epochs=1``, no mini-batches: the paper's setting). Then the first and only gradient step sees
  pi_theta == pi_old, so pi_old is the detached value of the same forward pass, bit for bit; this saves a
  third of the compute. Otherwise pi_old comes from a no-grad pass before the first step.
- Micro-batches are scaled by their share of the aggregation's denominator (responses for the ``seq-mean-*``
  aggregations, tokens for ``token-mean``) in the whole mini-batch, counted over all ranks
  (:func:`~cdra_ray.learner.data_parallel.gradient_scale`), so accumulating them gives exactly the loss of the
  whole mini-batch at once, whatever the micro-batch size and the number of ranks. DeepSpeed runs with ``managed_gradient_accumulation``
  off: a batch has a varying number of micro-batches and ``step()`` marks the boundary.
- The G responses of a group share one forward pass over their prompt (``share_prompt_forward``, see
  :func:`~cdra_ray.learner.logprobs.shared_prompt_logprobs`): the same loss and gradients with the prompt's
  compute paid once per micro-batch instead of once per response.
- Dropout is switched off (``disable_dropout``): with dropout the ratio pi_theta/pi_old is noise even before
  any update.

- Data parallel over ``learner.num_ranks`` processes (one torch.distributed group): every rank gets the whole
  batch and trains on its own share of each mini-batch's rows; the loss weights make the all-reduced gradient
  the one-rank gradient (:mod:`~cdra_ray.learner.data_parallel`). Under ZeRO-3 with several ranks a group's
  prompt is not shared across its rows (``share_prompt_forward`` is ignored): the number of forward passes
  must be the same on every rank, since each one gathers the parameters collectively.

Checkpoints (the HF policy and the resume state) are written by :mod:`cdra_ray.driver.checkpointing`.

Usable without Ray: a single process sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT itself when they are
missing and initialises torch.distributed with gloo (CPU) or NCCL (CUDA); the engine is built by
:func:`~cdra_ray.learner.engine.create_deepspeed_engine`, shared with SFT. DeepSpeed is imported inside
methods so a Ray actor class wrapping this module pickles.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from cdra_ray.algorithms.catalog import AGGREGATIONS
from cdra_ray.config.schema import AlgorithmConfig
from cdra_ray.engines.catalog import resolve_dtype
from cdra_ray.learner.batch import TrainBatch, build_batch, micro_batches
from cdra_ray.learner.data_parallel import gradient_scale, merge_metric_sums, rank_micro_batches
from cdra_ray.learner.engine import (  # noqa: F401  (free_port, init_distributed: re-exported)
    DTYPES,
    EngineSettings,
    create_deepspeed_engine,
    free_port,
    init_distributed,
    world_size,
)
from cdra_ray.learner.logprobs import response_logprobs, shared_prompt_logprobs
from cdra_ray.messages import Group

log = logging.getLogger(__name__)


@dataclass
class LearnerSettings:
    """Everything the learner needs, explicitly (``cdra_ray.actors.constructors`` maps the run config onto it)."""

    model_dir: str
    # optimisation
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    # CDPA loss
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # DAPO clip-higher; None = clip_eps (symmetric, the paper)
    beta: float = AlgorithmConfig.beta  # KL coefficient; > 0 needs ref_logprobs on every group
    aggregation: str = "seq-mean-token-sum"
    importance_cap: float | None = None  # truncated importance weight min(pi_old/pi_behaviour, cap); None = off
    advantage: str = "cdpa"  # a name in cdra_ray.algorithms.catalog.ADVANTAGES
    advantage_eps: float = 1e-6
    advantage_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"normalize": "position"}
    temperature: float = 1.0  # the sampling temperature: log-probs are of softmax(logits / temperature)
    # batching
    micro_batch_size: int = 5  # responses per forward/backward
    mini_batch_size: int | None = None  # responses per optimizer step; None = the whole batch
    ppo_epochs: int = 1
    logprob_chunk_size: int = 1024  # token rows per log-softmax chunk
    share_prompt_forward: bool = True  # a group's prompt runs once per micro-batch (not with grad. checkpointing)
    # engine
    zero_stage: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16 (DeepSpeed mixed precision) | auto (resolved on load)
    offload_optimizer: str = "none"  # none | cpu
    offload_params: str = "none"  # none | cpu (ZeRO-3 only)
    gradient_checkpointing: bool = False
    disable_dropout: bool = True
    attn_implementation: str = "sdpa"
    device: str = "cpu"  # cpu | cuda
    dist_backend: str = "gloo"  # gloo | nccl
    num_threads: int | None = None  # torch intra-op threads; None = leave torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"LearnerSettings.aggregation must be one of {AGGREGATIONS.names()}, "
                             f"got {self.aggregation!r}")
        if self.dtype not in DTYPES and self.dtype != "auto":
            raise ValueError(f"LearnerSettings.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"LearnerSettings.device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dist_backend not in ("gloo", "nccl"):
            raise ValueError(f"LearnerSettings.dist_backend must be 'gloo' or 'nccl', got {self.dist_backend!r}")
        if self.dist_backend == "nccl" and self.device != "cuda":
            raise ValueError("LearnerSettings.dist_backend 'nccl' needs device 'cuda'")
        for name in ("micro_batch_size", "ppo_epochs", "logprob_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LearnerSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(f"LearnerSettings.mini_batch_size must be >= 1 or None, got {self.mini_batch_size}")
        if self.beta < 0:
            raise ValueError(f"LearnerSettings.beta must be >= 0, got {self.beta}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"LearnerSettings.clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.importance_cap is not None and self.importance_cap <= 0:
            raise ValueError(f"LearnerSettings.importance_cap must be > 0 or None, got {self.importance_cap}")
        if self.temperature <= 0:
            raise ValueError(f"LearnerSettings.temperature must be > 0, got {self.temperature}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"LearnerSettings.num_threads must be >= 1 or None, got {self.num_threads}")


def _accumulate(sums: dict[str, float], metrics: dict[str, float], share: float) -> None:
    """Fold one micro-batch's loss metrics into batch-level ones: ``*_min``/``*_max`` by min/max, counts
    (``num_*``) by sum, everything else as a mean weighted by the micro-batch's share of the batch."""
    for key, value in metrics.items():
        value = float(value)
        if key.endswith("_min"):
            sums[key] = min(sums.get(key, value), value)
        elif key.endswith("_max"):
            sums[key] = max(sums.get(key, value), value)
        elif key.startswith("num_"):
            continue  # the learner reports its own counts
        else:
            sums[key] = sums.get(key, 0.0) + value * share


class Learner:
    """Owns the policy's trainable copy, its optimizer and its version counter."""

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = s = replace(settings, dtype=resolve_dtype(settings.dtype))
        model_dir = Path(s.model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"LearnerSettings.model_dir {str(model_dir)!r} is not an HF model directory "
                                    "(no config.json)")
        if s.num_threads is not None:
            torch.set_num_threads(s.num_threads)
        os.environ.setdefault("DS_ACCELERATOR", s.device)
        self.policy_version = 0
        self._seed_everything(s.seed)

        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, attn_implementation=s.attn_implementation
        )
        model.config.use_cache = False
        if s.disable_dropout:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError, TypeError) as exc:  # a bare weights dir (tests) has no tokenizer
            log.warning("no tokenizer in %s (%s); HF checkpoints will be saved without one", model_dir, exc)
            self.tokenizer = None
        self.pad_token_id = self._pad_token_id(model)

        self.engine, self.ds_config = create_deepspeed_engine(model, EngineSettings(
            zero_stage=s.zero_stage, micro_batch_size=s.micro_batch_size, dtype=s.dtype, lr=s.lr, betas=s.betas,
            adam_eps=s.adam_eps, weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm,
            offload_optimizer=s.offload_optimizer, offload_params=s.offload_params, device=s.device,
            dist_backend=s.dist_backend))
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.engine.train()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np

            np.random.seed(seed % 2**32)
        except ImportError:  # pragma: no cover - numpy ships with torch's deps here
            pass

    def _pad_token_id(self, model: torch.nn.Module) -> int:
        for source in (self.tokenizer, model.config):
            for attr in ("pad_token_id", "eos_token_id"):
                value = getattr(source, attr, None) if source is not None else None
                if isinstance(value, list):
                    value = value[0] if value else None
                if isinstance(value, int):
                    return value
        return 0

    @property
    def model(self) -> torch.nn.Module:
        """The HF model inside the engine (parameters partitioned under ZeRO-3)."""
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def _is_zero3(self) -> bool:
        return self.settings.zero_stage == 3

    def _shares_prompt(self) -> bool:
        """Prompt sharing runs two forward passes per group of a micro-batch: a count that differs between ranks,
        which ZeRO-3's per-forward parameter gathers cannot allow."""
        s = self.settings
        return s.share_prompt_forward and not s.gradient_checkpointing and not (
            self._is_zero3() and self.world_size > 1)

    def _logprobs(self, batch: TrainBatch) -> torch.Tensor:
        dev = self.device
        if self._shares_prompt():
            return shared_prompt_logprobs(
                self.engine,
                batch.input_ids.to(dev),
                batch.attention_mask.to(dev),
                batch.response_ids.to(dev),
                batch.group_ids,
                chunk_size=self.settings.logprob_chunk_size,
                temperature=self.settings.temperature,
            )
        return response_logprobs(
            self.engine,
            batch.input_ids.to(dev),
            batch.attention_mask.to(dev),
            batch.position_ids.to(dev),
            batch.response_ids.to(dev),
            chunk_size=self.settings.logprob_chunk_size,
            temperature=self.settings.temperature,
        )

    @torch.no_grad()
    def policy_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """(N, C) log pi_theta of the batch's responses with the current weights, no gradient, 0 at pads.

        With several ranks each computes its share of the rows and an all-reduce assembles the whole; every
        rank must call it.
        """
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        rows_all = list(range(batch.num_rows))
        for rows in rank_micro_batches(rows_all, self.settings.micro_batch_size, self.rank, self.world_size):
            sub = batch.select(rows or [0])  # an empty micro-batch still runs its forward (ZeRO-3 gathers)
            values = self._logprobs(sub).float().cpu()
            if rows:
                out[rows, :sub.response_width] = values
        if self.world_size > 1:
            import torch.distributed as dist

            summed = out.to(self.device)
            dist.all_reduce(summed)  # rows are disjoint: the sum is the concatenation
            out = summed.cpu()
        return out * batch.response_mask

    def _advantages(self, batch: TrainBatch) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(N, C) advantages, computed group by group (each group normalises only over itself)."""
        from cdra_ray.algorithms.advantages import compute_advantages

        s = self.settings
        advantages = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        per_group, masks = [], []
        for rows in batch.group_slices:
            width = int(batch.response_mask[rows].sum(dim=1).max())
            steps = int(batch.step_mask[rows].sum(dim=1).max())
            adv = compute_advantages(
                s.advantage,
                batch.step_rewards[rows, :steps],
                batch.step_mask[rows, :steps],
                batch.token_steps[rows, :width],
                batch.response_mask[rows, :width],
                eps=s.advantage_eps,
                **s.advantage_options,
            )
            adv = adv.float() * batch.response_mask[rows, :width]
            advantages[rows, :width] = adv
            per_group.append(adv)
            masks.append(batch.response_mask[rows, :width])
        return advantages, per_group, masks

    def _local_grad_norm(self) -> float | None:
        """Pre-clipping gradient norm where DeepSpeed does not record one (no ZeRO: plain ``.grad``s).

        Without ZeRO DeepSpeed all-reduces in ``step()``; with several ranks the norm needs the reduced
        gradient, so it is reduced here first (averaging equal tensors again in ``step()`` changes nothing).
        """
        if self.settings.zero_stage != 0:
            return None
        if world_size() > 1:  # the process group's (the SFT trainer borrows this method)
            self.engine.allreduce_gradients()
        grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else None

    # ------------------------------------------------------------------ training
    def train_on_groups(self, groups: list[Group]) -> dict[str, float]:
        """One policy update on ``groups``; returns metrics (means over the batch) and bumps ``policy_version``."""
        from cdra_ray.algorithms.advantages import zero_advantage_rate
        from cdra_ray.algorithms.policy_loss import cdpa_policy_loss

        s = self.settings
        started = time.perf_counter()
        batch = build_batch(groups, pad_token_id=self.pad_token_id)
        if s.beta > 0 and batch.ref_logprobs is None:
            raise ValueError(f"LearnerSettings.beta is {s.beta} but the groups carry no ref_logprobs "
                             "(run the reference policy on them, or set beta=0)")
        use_behaviour = s.importance_cap is not None
        if use_behaviour and batch.sampling_logprobs is None:
            raise ValueError("LearnerSettings.importance_cap is set but some samples have no sampling_logprobs")

        advantages, per_group_adv, per_group_mask = self._advantages(batch)
        n = batch.num_rows
        mini = s.mini_batch_size or n
        single_step = s.ppo_epochs == 1 and mini >= n
        old_logprobs = None if single_step else self.policy_logprobs(batch)

        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + self.policy_version)
        sums: dict[str, float] = {}
        grad_norms: list[float] = []
        optimizer_steps = 0
        self.engine.train()
        for epoch in range(s.ppo_epochs):
            order = torch.arange(n) if epoch == 0 and single_step else torch.randperm(n, generator=generator)
            for mini_rows in micro_batches(n, mini, order):
                # totals over the whole mini-batch, all ranks: each rank weights its rows by their global share
                total_rows = len(mini_rows)
                total_tokens = int(batch.response_mask[mini_rows].sum())
                for rows in rank_micro_batches(mini_rows, s.micro_batch_size, self.rank, self.world_size):
                    sub_rows = rows or list(mini_rows[:1])  # an empty micro-batch runs as a zero-weighted pass
                    sub = batch.select(sub_rows)
                    width = sub.response_width
                    dev = self.device
                    mask = sub.response_mask.to(dev)
                    logprobs = self._logprobs(sub).float()
                    old = logprobs.detach() if old_logprobs is None else old_logprobs[sub_rows, :width].to(dev)
                    ref = sub.ref_logprobs.to(dev) if sub.ref_logprobs is not None else None
                    behaviour = sub.sampling_logprobs.to(dev) if use_behaviour else None
                    loss, metrics = cdpa_policy_loss(
                        logprobs,
                        old,
                        ref,
                        advantages[sub_rows, :width].to(dev),
                        mask,
                        clip_eps=s.clip_eps,
                        clip_eps_high=s.clip_eps_high,
                        beta=s.beta,
                        aggregation=s.aggregation,
                        behaviour_logprobs=behaviour,
                        importance_cap=s.importance_cap,
                    )
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite CDPA loss {loss.item()} at policy version "
                                                 f"{self.policy_version}, epoch {epoch}, rows {sub_rows}")
                    if not rows:
                        self.engine.backward(loss * 0.0)
                        continue
                    weight = gradient_scale(s.aggregation, len(rows), int(sub.response_mask.sum()),
                                            total_rows, total_tokens, self.world_size)
                    self.engine.backward(loss * weight)
                    share = weight / self.world_size  # of the mini-batch's loss
                    _accumulate(sums, metrics, share=share * total_rows / n / s.ppo_epochs)
                local_norm = self._local_grad_norm()
                self.engine.step()
                optimizer_steps += 1
                norm = self.engine.get_global_grad_norm()
                norm = local_norm if norm is None else norm
                if norm is not None:
                    grad_norms.append(float(norm))
        self.policy_version += 1
        if self.world_size > 1:
            import torch.distributed as dist

            per_rank: list[dict[str, float]] = [{} for _ in range(self.world_size)]
            dist.all_gather_object(per_rank, sums)
            sums = merge_metric_sums(per_rank)

        tokens = batch.response_mask.sum()
        out = dict(sums)
        out.update(
            {
                "grad_norm": grad_norms[-1] if grad_norms else float("nan"),
                "zero_advantage_rate": float(zero_advantage_rate(per_group_adv, per_group_mask)),
                "advantage_abs_mean": float((advantages.abs() * batch.response_mask).sum() / tokens),
                "reward_mean": float((batch.step_rewards * batch.step_mask).sum() / batch.step_mask.sum()),
                "num_groups": float(len(groups)),
                "num_samples": float(n),
                "num_tokens": float(tokens),
                "response_length_mean": float(tokens) / n,
                "staleness_mean": float((self.policy_version - 1 - batch.policy_versions).float().mean()),
                "optimizer_steps": float(optimizer_steps),
                "lr": float(self.engine.get_lr()[0]),
                "policy_version": float(self.policy_version),
                "step_time_s": time.perf_counter() - started,
            }
        )
        return out

    # ------------------------------------------------------------------ weights out
    def weight_source(self, dtype: torch.dtype | None = None):
        """The learner's weights as a vLLM ``WeightSource`` (for :class:`~.weight_sync_gpu.NcclWeightSync`)."""
        from cdra_ray.learner.weight_sync_gpu import GatheredWeightSource

        return GatheredWeightSource(self.model, dtype=dtype, zero3=self._is_zero3())

    def iter_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) per parameter, in ``named_parameters`` order (tied weights once).

        Under ZeRO-3 each parameter is gathered for the time of its ``yield`` only: copy what you keep. Every
        rank must iterate (the gather is a collective).
        """
        yield from self.weight_source(dtype)

    def export_weights(self, dtype: torch.dtype | None = None, copy: bool = True) -> dict[str, torch.Tensor]:
        """HF-named CPU tensors of all parameters, for ``GenerationEngine.load_weights``.

        ``copy=True``: clones, safe to keep. ``copy=False``: the live CPU parameters themselves where possible
        (ZeRO-0/1/2), valid until the next optimizer step, for a caller that serializes them at once (the Ray
        shell packs them with :func:`~cdra_ray.actors.shared_weights.pack_weights`); ZeRO-3 gathers and
        non-CPU parameters are copied either way.
        """
        copy = copy or self._is_zero3()
        return {name: tensor.detach().to("cpu", copy=copy) for name, tensor in self.iter_weights(dtype)}

    def close(self) -> None:
        """Free the engine (the process group stays: other engines in this process may share it)."""
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = None  # type: ignore[assignment]
