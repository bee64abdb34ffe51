"""What differs between the SFT tasks, behind one registry: the data they read, the model class they train, how
records become examples, and the loss of a micro-batch. The trainer (``trainer.py``) is the same for all.

Adding a task: subclass :class:`SFTTask`, decorate it with ``@register_sft_task("name")`` and add the name to
``cdra_ray.config.sft.SFT_TASKS``.
"""

from __future__ import annotations

import logging
from typing import Callable, ClassVar, Sequence

import torch

from cdra_ray.sft import examples as ex
from cdra_ray.sft.data import rea_paths
from cdra_ray.sft.losses import bradley_terry, causal_lm_loss, collate_left, step_bce

log = logging.getLogger(__name__)

SFT_TASK_REGISTRY: dict[str, type] = {}


def register_sft_task(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        SFT_TASK_REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorate


def create_sft_task(name: str) -> "SFTTask":
    if name not in SFT_TASK_REGISTRY:
        raise ValueError(f"unknown SFT task {name!r} (sft.task / --task); valid: {sorted(SFT_TASK_REGISTRY)}")
    return SFT_TASK_REGISTRY[name]()


class SFTTask:
    """Base: a causal LM trained on target tokens only."""

    name: ClassVar[str] = ""
    data_kind: ClassVar[str] = "d_rea"
    trains_critic: ClassVar[bool] = True  # default base model: reward.model (else model.policy)
    reward_kind: ClassVar[str | None] = None  # the reward.kind a checkpoint of this task plugs into

    def load_model(self, model_dir: str) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")

    def build_examples(self, tokenizer, records: Sequence, max_length: int) -> list[ex.Example]:
        raise NotImplementedError  # every registered task defines it

    def loss(self, model, batch: Sequence[ex.Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attention, positions, loss_mask = collate_left([e.input_ids for e in batch],
                                                            [e.loss_mask for e in batch], pad_id)
        return causal_lm_loss(model, ids.to(device), attention.to(device), positions.to(device),
                              loss_mask.to(device))


@register_sft_task("prm")
class PersGenPRMTask(SFTTask):
    """Pers-GenPRM (Eq. 2): critique and score of step j given (P, q, steps 1..j); one D_Rea record = one step."""

    data_kind = "d_rea"
    reward_kind = "pers_genprm"

    def build_examples(self, tokenizer, records, max_length):
        return [ex.prm_example(tokenizer, r, max_length) for r in records]


@register_sft_task("rft")
class RFTTask(SFTTask):
    """Rejection-sampling fine-tuning of the policy (§2.4 step 1) on the best path per scenario."""

    data_kind = "d_rft"
    trains_critic = False

    def build_examples(self, tokenizer, records, max_length):
        return [ex.rft_example(tokenizer, r, max_length) for r in records]


def _head_model(auto_cls, model_dir: str) -> torch.nn.Module:
    """A one-output head model; a head the directory does not hold starts at zero (every score 0 before training)."""
    model, info = auto_cls.from_pretrained(model_dir, num_labels=1, dtype=torch.float32, output_loading_info=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in info.get("missing_keys", []):
            if name in params:
                params[name].zero_()
    return model


@register_sft_task("prm_head")
class PRMHeadTask(SFTTask):
    """The ``prm`` reward variant: a token head read at each step's last token, BCE against (s + 1) / 2."""

    data_kind = "d_rea"
    reward_kind = "prm"

    def load_model(self, model_dir):
        from transformers import AutoModelForTokenClassification

        return _head_model(AutoModelForTokenClassification, model_dir)

    def build_examples(self, tokenizer, records, max_length):
        return [ex.prm_head_example(tokenizer, last, scores, max_length) for last, scores in rea_paths(records)]

    def loss(self, model, batch, pad_id, device):
        from cdra_ray.rewards.head_models import pad_right

        ids, attention = pad_right([e.input_ids for e in batch], pad_id)
        width = max(len(e.positions) for e in batch)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        targets = torch.zeros((len(batch), width))
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, e in enumerate(batch):
            positions[i, :len(e.positions)] = torch.tensor(e.positions)
            targets[i, :len(e.targets)] = torch.tensor(e.targets)
            mask[i, :len(e.positions)] = True
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[..., 0]
        return step_bce(logits.float(), positions.to(device), mask.to(device), targets.to(device))


@register_sft_task("scalar_rm")
class ScalarRMTask(SFTTask):
    """The ``scalar_rm`` reward variant: Bradley-Terry on D_RFT's best vs worst path of a scenario."""

    data_kind = "d_rft"
    reward_kind = "scalar_rm"

    def load_model(self, model_dir):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = _head_model(AutoModelForSequenceClassification, model_dir)
        if model.config.pad_token_id is None:  # the head pools at the last non-pad token
            tok = AutoTokenizer.from_pretrained(model_dir)
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return model

    def build_examples(self, tokenizer, records, max_length):
        out = [ex.scalar_rm_example(tokenizer, r, max_length) for r in records]
        skipped = sum(e is None for e in out)
        if skipped:
            log.info("scalar_rm: %d of %d records have no rejected_response and are skipped", skipped, len(out))
        return [e for e in out if e is not None]

    def loss(self, model, batch, pad_id, device):
        from cdra_ray.rewards.head_models import pad_right

        ids, attention = pad_right([e.input_ids for e in batch] + [e.rejected_ids for e in batch], pad_id)
        scores = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, 0]
        return bradley_terry(scores[:len(batch)], scores[len(batch):])
