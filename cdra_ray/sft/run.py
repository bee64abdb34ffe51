"""``cdra-ray sft --task prm|rft|prm_head|scalar_rm``: from a config to a trained HF checkpoint directory.

Cheapest first, so bad input fails before any model loads: config, every data line, the scenario split, the
tokenizer and every example (truncation counted), then the model and DeepSpeed. Outputs in ``sft.output_dir``:
``config.yaml``, ``metrics.jsonl`` (+ TensorBoard), ``split.json``, ``state/`` (resume), ``final/`` (the
checkpoint: ``reward.model=<final>`` with ``reward.kind`` = the task's kind, or ``model.policy=<final>`` for rft),
``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from cdra_ray.config import Config, ConfigError, save_resolved
from cdra_ray.config.schema import DEMO_MODEL
from cdra_ray.sft.data import TASK_DATA, load_records, resolve_data_file, split_by_scenario

log = logging.getLogger(__name__)


def run_dir(config: Config) -> Path:
    return Path(config.run.output_dir).expanduser() / config.run.name


def sft_output_dir(config: Config, task: str) -> Path:
    return Path(config.sft.output_dir).expanduser() if config.sft.output_dir else run_dir(config) / f"sft_{task}"


def construct_dir(config: Config) -> Path:
    section = getattr(config, "construct", None)
    custom = getattr(section, "output_dir", None) if section is not None else None
    return Path(custom).expanduser() if custom else run_dir(config) / "construct"


def base_model_setting(config: Config, task: str) -> str:
    from cdra_ray.sft.tasks import create_sft_task

    if config.sft.model:
        return config.sft.model
    return (config.reward.model or DEMO_MODEL) if create_sft_task(task).trains_critic else config.model.policy


def load_split(config: Config, task: str):
    """(data file, train records, held-out records) of the task's data, split by scenario."""
    data_file = resolve_data_file(config.sft.data, task, construct_dir(config))
    records = load_records(data_file, TASK_DATA[task])
    train, heldout = split_by_scenario(records, config.sft.heldout_fraction, config.sft.split_seed)
    return data_file, train, heldout


def truncation_report(examples) -> dict[str, int]:
    return {"examples": len(examples), "truncated_examples": sum(e.truncated > 0 for e in examples),
            "truncated_prompt_tokens": sum(e.truncated for e in examples)}


def run_sft(config: Config, task: str | None = None) -> Path:
    """Train ``task`` (default ``sft.task``) and return the final checkpoint directory."""
    from transformers import AutoTokenizer

    from cdra_ray.driver.metrics import MetricsWriter
    from cdra_ray.sft.tasks import create_sft_task
    from cdra_ray.sft.trainer import SFTTrainer, TrainerSettings
    from cdra_ray.train import resolve_model_setting

    started = time.perf_counter()
    task = task or config.sft.task
    s = config.sft
    objective = create_sft_task(task)
    data_file, train_records, heldout_records = load_split(config, task)
    out_dir = sft_output_dir(config, task)
    if s.resume and not (out_dir / "state").is_dir():
        raise ConfigError(f"sft.resume=true but {out_dir} has no state/ to resume from")
    if not s.resume and ((out_dir / "state").is_dir() or (out_dir / "metrics.jsonl").is_file()):
        raise ConfigError(f"{out_dir} already holds an SFT run: pass sft.resume=true to continue it, or choose "
                          "another sft.output_dir / run.name")
    model_dir = resolve_model_setting(base_model_setting(config, task))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = objective.build_examples(tokenizer, train_records, s.max_length)
    heldout = objective.build_examples(tokenizer, heldout_records, s.max_length)
    if not train:
        raise ConfigError(f"sft: {data_file} yields no {task} training examples")
    truncation = {"train": truncation_report(train), "heldout": truncation_report(heldout)}
    for side, rep in truncation.items():
        if rep["truncated_examples"]:
            log.warning("sft %s: %d %s examples were longer than sft.max_length=%d and lost %d prompt tokens "
                        "from the left", task, rep["truncated_examples"], side, s.max_length,
                        rep["truncated_prompt_tokens"])
    per_step = s.micro_batch_size * s.grad_accum_steps
    total_steps = s.max_steps or max(1, math.ceil(s.epochs * len(train) / per_step))

    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(config, out_dir)
    (out_dir / "split.json").write_text(json.dumps({
        "data": str(data_file), "train_scenarios": sorted({r.scenario_id for r in train_records}),
        "heldout_scenarios": sorted({r.scenario_id for r in heldout_records})}, indent=1))
    settings = TrainerSettings(
        total_steps=total_steps, micro_batch_size=s.micro_batch_size, grad_accum_steps=s.grad_accum_steps, lr=s.lr,
        lr_schedule=s.lr_schedule, warmup_steps=s.warmup_steps, min_lr_ratio=s.min_lr_ratio,
        weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm, zero_stage=s.zero_stage,
        dtype=config.model.dtype, device=config.learner.device, gradient_checkpointing=s.gradient_checkpointing,
        eval_every=s.eval_every, save_every=s.save_every, seed=s.seed, num_threads=s.num_threads,
        lora_r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, lora_targets=list(s.lora_targets))
    trainer = SFTTrainer(objective, model_dir, settings, train, heldout, pad_id, tokenizer=tokenizer)
    if s.resume:
        log.info("resuming SFT at step %d", trainer.load_state(out_dir / "state"))
    writer = MetricsWriter(out_dir, tensorboard=config.run.tensorboard)
    try:
        result = trainer.fit(out_dir, writer, progress=config.run.progress_bar)
    finally:
        writer.close()
    history = result["history"]
    train_time = sum(h["train/step_time_s"] for h in history)
    summary = {
        "task": task, "reward_kind": objective.reward_kind, "data": str(data_file), "base_model": model_dir,
        "checkpoint": str(out_dir / "final"), "steps": trainer.step, "total_steps": total_steps,
        "train_examples": len(train), "heldout_examples": len(heldout), "truncation": truncation,
        "evals": result["evals"], "train_loss": [round(h["train/loss"], 5) for h in history],
        "tokens_per_s": sum(h["train/tokens"] for h in history) / train_time if train_time else None,
        "wall_time_s": time.perf_counter() - started,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if len(result["evals"]) >= 2:
        log.info("sft %s: held-out loss %.4f -> %.4f over %d steps; checkpoint %s", task,
                    result["evals"][0]["eval/loss"], result["evals"][-1]["eval/loss"], trainer.step, out_dir / "final")
    return out_dir / "final"
