"""One SFT trainer for every task, on the learner's DeepSpeed engine (same config builder, ZeRO stages, gloo/NCCL).

One optimizer step::

    examples of the step (a seeded per-epoch order; the step number alone says which)
      ─► micro-batches ─► task.loss (sum, count) ─► backward(sum / count of the whole step)
      ─► engine.step()  (clipped grad norm, AdamW, LR schedule: linear warm-up, then cosine / linear / constant)

Every ``eval_every`` steps the held-out loss (the same normalisation over all held-out units) is logged; every
``save_every`` steps, and at the end, the resume state (DeepSpeed checkpoint: weights, optimizer, scheduler,
step, RNG) and an HF checkpoint are written atomically. The example order is a pure function of (seed, step),
so a resumed run continues at the same example with the same loss.

LoRA (``lora_r > 0``, through ``peft``): only the adapters train; checkpoints are the merged model, so they load
in plain transformers and vLLM like any other.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from cdra_ray.learner.engine import EngineSettings, create_deepspeed_engine
from cdra_ray.driver.checkpointing import _rng_state, _set_rng_state, atomic_directory, previous_path
from cdra_ray.learner.learner import Learner
from cdra_ray.sft.examples import Example

log = logging.getLogger(__name__)
STATE_TAG = "state"


@dataclass
class TrainerSettings:
    total_steps: int
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 1e-5
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    gradient_checkpointing: bool = False
    eval_every: int = 10
    save_every: int = 0
    seed: int = 0
    num_threads: int | None = None
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps


# ----------------------------------------------------------------------------------------------- pure pieces
def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR for optimizer step ``step`` (0-based): (k+1)/warmup during warm-up, then the decay
    from 1 to ``min_ratio`` over the remaining steps (constant: stays 1)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def step_indices(step: int, per_step: int, n: int, seed: int) -> list[int]:
    """Indices of the examples of optimizer step ``step``: a stream over per-epoch seeded shuffles of ``n``."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(k, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out


def _chunks(items: Sequence, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


class SFTTrainer:
    """Trains ``task``'s model from ``model_dir`` on ``train`` examples, evaluating on ``heldout``."""

    def __init__(self, task, model_dir: str, settings: TrainerSettings, train: list[Example],
                 heldout: list[Example], pad_id: int, tokenizer=None) -> None:
        if not train:
            raise ValueError("SFTTrainer: no training examples")
        self.task, self.settings, self.train, self.heldout = task, settings, train, heldout
        self.pad_id, self.tokenizer, self.model_dir = pad_id, tokenizer, model_dir
        s = settings
        if s.num_threads is not None:
            torch.set_num_threads(s.num_threads)
        Learner._seed_everything(s.seed)
        model = task.load_model(model_dir)
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if s.lora_r:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                                     target_modules=list(s.lora_targets), task_type="CAUSAL_LM"))
        schedule = dict(total=s.total_steps, warmup=s.warmup_steps, schedule=s.lr_schedule, min_ratio=s.min_lr_ratio)
        self.engine, self.ds_config = create_deepspeed_engine(
            model,
            EngineSettings(zero_stage=s.zero_stage, micro_batch_size=s.micro_batch_size, dtype=s.dtype, lr=s.lr,
                           weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm, device=s.device,
                           dist_backend="nccl" if s.device == "cuda" else "gloo"),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, **schedule)),
        )
        self.step = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module

    # ------------------------------------------------------------------ training
    def step_examples(self, step: int | None = None) -> list[Example]:
        s = self.settings
        idx = step_indices(self.step if step is None else step, s.examples_per_step, len(self.train), s.seed)
        return [self.train[i] for i in idx]

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns its loss (token/step/pair mean over the step) and throughput."""
        started = time.perf_counter()
        batch = self.step_examples()
        total = float(sum(e.count for e in batch))
        self.engine.train()
        loss_sum, tokens = 0.0, 0
        for micro in _chunks(batch, self.settings.micro_batch_size):
            summed, _ = self.task.loss(self.engine, micro, self.pad_id, self.engine.device)
            if not torch.isfinite(summed):
                raise FloatingPointError(f"non-finite SFT loss at step {self.step} (examples "
                                         f"{[e.uid for e in micro]})")
            self.engine.backward(summed / total)
            loss_sum += float(summed.detach())
            tokens += sum(e.num_tokens for e in micro)
        local_norm = Learner._local_grad_norm(self)  # the learner's pre-clipping norm (ZeRO-0 only)
        lr = float(self.engine.get_lr()[0])
        self.engine.step()
        self.step += 1
        norm = self.engine.get_global_grad_norm()
        norm = local_norm if norm is None else norm
        seconds = time.perf_counter() - started
        return {"train/loss": loss_sum / total, "train/lr": lr, "train/grad_norm": float(norm or float("nan")),
                "train/tokens": float(tokens), "train/tokens_per_s": tokens / seconds, "train/step_time_s": seconds,
                "train/examples": float(len(batch)), "train/first_example": batch[0].uid}

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Example] | None = None) -> dict[str, float]:
        """Held-out loss: summed over every held-out unit (token, step, pair), divided by their number."""
        examples = self.heldout if examples is None else examples
        if not examples:
            return {}
        self.engine.eval()
        total, count = 0.0, 0.0
        for micro in _chunks(list(examples), self.settings.micro_batch_size):
            summed, n = self.task.loss(self.engine, micro, self.pad_id, self.engine.device)
            total += float(summed)
            count += float(n)
        self.engine.train()
        return {"eval/loss": total / count, "eval/units": count}

    # ------------------------------------------------------------------ checkpoints
    def save_hf(self, directory: str | Path) -> Path:
        """An HF model directory (merged if LoRA) + tokenizer, loadable by transformers and vLLM. Atomic."""
        from cdra_ray.learner.weight_sync_gpu import GatheredWeightSource

        model = self.model
        if self.settings.lora_r:
            model = copy.deepcopy(model).merge_and_unload()
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        else:
            state = {name: t.detach().to("cpu", copy=True)
                     for name, t in GatheredWeightSource(model, zero3=self.settings.zero_stage == 3)}
        with atomic_directory(directory) as scratch:
            model.save_pretrained(str(scratch), state_dict=state)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(scratch))
        return Path(directory)

    def save_state(self, directory: str | Path) -> Path:
        client = {"step": self.step, "rng": _rng_state()}
        with atomic_directory(directory) as scratch:
            self.engine.save_checkpoint(str(scratch), tag=STATE_TAG, client_state=client, save_latest=False)
        return Path(directory)

    def load_state(self, directory: str | Path) -> int:
        directory = Path(directory)
        if not directory.is_dir() and previous_path(directory).is_dir():
            directory = previous_path(directory)
        if not (directory / STATE_TAG).is_dir():
            raise FileNotFoundError(f"{str(directory)!r} holds no SFT resume state (sft.resume=true needs one)")
        path, client = self.engine.load_checkpoint(str(directory), tag=STATE_TAG, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None or client is None:
            raise RuntimeError(f"DeepSpeed could not load the SFT state from {str(directory)!r}")
        self.step = int(client["step"])
        _set_rng_state(client["rng"])
        return self.step

    # ------------------------------------------------------------------ the loop
    def fit(self, out_dir: Path, writer=None, progress: bool = True) -> dict[str, Any]:
        """Train to ``total_steps`` from the current step, logging, evaluating and checkpointing on the way."""
        from tqdm import tqdm

        s = self.settings
        history: list[dict] = []
        evals: list[dict] = []
        if self.step == 0 and self.heldout:
            first = {"step": 0, **self.evaluate()}
            evals.append(first)
            if writer is not None:
                writer.write(0, {k: v for k, v in first.items() if k != "step"})
        bar = tqdm(total=s.total_steps, initial=self.step, desc=f"sft {self.task.name}", disable=not progress,
                   dynamic_ncols=True)
        while self.step < s.total_steps:
            metrics = self.train_step()
            last = self.step == s.total_steps
            if self.heldout and (last or (s.eval_every and self.step % s.eval_every == 0)):
                metrics.update(self.evaluate())
                evals.append({"step": self.step, "eval/loss": metrics["eval/loss"]})
            if last or (s.save_every and self.step % s.save_every == 0):
                self.save_state(out_dir / "state")
                self.save_hf(out_dir / ("final" if last else f"checkpoint-{self.step}"))
            history.append({"step": self.step, **metrics})
            if writer is not None:
                writer.write(self.step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", **({"eval": f"{metrics['eval/loss']:.4f}"}
                                                                     if "eval/loss" in metrics else {}))
            bar.update(1)
        bar.close()
        if not (out_dir / "final" / "config.json").is_file():
            # resumed from a state saved at the last step whose final checkpoint was not (completely) written
            self.save_hf(out_dir / "final")
        return {"history": history, "evals": evals}
