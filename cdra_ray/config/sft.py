"""``sft``: supervised fine-tuning of the critic (Pers-GenPRM, Eq. 2), the policy (RFT) and the trainable ablation
reward models, and the critic-quality report (``cdra-ray sft`` / ``cdra-ray prm-eval``). Torch-free.

Checked when the config is built (``__post_init__``): a bad value raises ``ConfigError`` naming ``sft.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

SFT_TASKS = ("prm", "rft", "prm_head", "scalar_rm")
LR_SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class SFTConfig:
    task: str = "prm"  # prm (Pers-GenPRM) | rft (policy) | prm_head (token-head PRM) | scalar_rm (Bradley-Terry RM)
    data: Optional[str] = None  # JSONL (d_rea for prm/prm_head, d_rft for rft/scalar_rm); None = construct output, else the bundled sample
    model: Optional[str] = None  # base model; None = reward.model (critic tasks) or model.policy (rft)
    output_dir: Optional[str] = None  # None = <run.output_dir>/<run.name>/sft_<task>
    heldout_fraction: float = 0.2  # share of scenarios (never single steps) held out for evaluation
    split_seed: int = 0
    max_length: int = 1024  # prompt + target tokens; longer examples lose prompt tokens from the left
    micro_batch_size: int = 4  # examples per forward/backward
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: Optional[int] = None  # optimizer steps; None = epochs x steps per epoch
    epochs: float = 1.0
    lr: float = 1.0e-5
    lr_schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 0
    gradient_checkpointing: bool = False
    eval_every: int = 10  # held-out loss every N optimizer steps (and at the end); 0 = only at the end
    save_every: int = 0  # resume state + HF checkpoint every N steps; 0 = only at the end
    resume: bool = False  # continue from <output_dir>/state
    num_threads: Optional[int] = None  # torch threads; None = torch's default
    seed: int = 0
    # LoRA (the paper's code trains r=16); 0 = full fine-tuning. The saved checkpoint is always merged.
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # prm-eval: the critic-quality report on the held-out scenarios
    eval_models: List[str] = field(default_factory=list)  # label=dir pairs; empty = base model and <output_dir>/final
    eval_score_mode: Optional[str] = None  # constrained | free; None = reward.score_mode (what training uses)
    eval_max_records: Optional[int] = None  # evaluate only the first N held-out records

    def __post_init__(self) -> None:
        from cdra_ray.config.loading import ConfigError

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"sft.{key}={getattr(self, key)!r}: {why}")

        if self.task not in SFT_TASKS:
            raise bad("task", f"must be one of {list(SFT_TASKS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {list(LR_SCHEDULES)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise bad("heldout_fraction", "must be in (0, 1)")
        for key in ("max_length", "micro_batch_size", "grad_accum_steps"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.max_length < 8:
            raise bad("max_length", "must be >= 8")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be >= 1 or null")
        if self.epochs <= 0:
            raise bad("epochs", "must be > 0")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        for key in ("warmup_steps", "weight_decay", "max_grad_norm", "eval_every", "save_every", "lora_r"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.zero_stage not in (0, 1, 2, 3):
            raise bad("zero_stage", "must be 0, 1, 2 or 3")
        if self.lora_r and self.zero_stage == 3:
            raise bad("lora_r", "LoRA is supported with zero_stage 0-2 (the merge needs whole weights)")
        if self.lora_r and self.task in ("prm_head", "scalar_rm"):
            raise bad("lora_r", "LoRA applies to the causal-LM tasks (prm, rft); head models train fully")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.eval_score_mode not in (None, "constrained", "free"):
            raise bad("eval_score_mode", "must be constrained, free or null")
        if self.eval_max_records is not None and self.eval_max_records < 1:
            raise bad("eval_max_records", "must be >= 1 or null")
        if self.num_threads is not None and self.num_threads < 1:
            raise bad("num_threads", "must be >= 1 or null")
        for item in self.eval_models:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ConfigError(f"sft.eval_models item {item!r}: expected label=model_dir")
