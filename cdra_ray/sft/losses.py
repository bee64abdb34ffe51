"""The SFT losses as functions of tensors, and the batch layouts they read.

Every loss returns ``(sum, count)``: the summed loss of a micro-batch and how many units (target tokens, steps,
pairs) it covers. The trainer divides each micro-batch's sum by the count of the whole optimizer step, so
gradient accumulation gives exactly the loss of the step's examples taken at once (a token mean over all
target tokens of the step, as TRL's SFTTrainer computes it with ``num_items_in_batch``), whatever the
micro-batch size.

Causal layout: rows are left-padded, so every row's target ends at the right edge and only the last
``K = (longest target) + 1`` positions need logits (``logits_to_keep``): for a 600-token critique prompt and a
100-token critique, 1/6 of the LM-head work and memory of full logits. Position ids count real tokens only, so
a left-padded row computes exactly what it computes alone.
"""

from __future__ import annotations

from typing import Sequence

import torch

from cdra_ray.learner.logprobs import token_logprobs


def masked_token_nll(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                     *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(target) over ``mask``, number of masked-in tokens).

    logits (B, T, V) predict target_ids (B, T) (already shifted); mask (B, T) is 1 where the token counts. Masked-out
    positions are multiplied by exactly 0, so their logits receive exactly zero gradient.
    """
    logp = token_logprobs(logits, target_ids, chunk_size=chunk_size)
    mask = mask.to(logp.dtype)
    return -(logp * mask).sum(), mask.sum()


def collate_left(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int):
    """Left-padded (input_ids, attention_mask, position_ids, loss_mask), each (B, L) long."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        if len(mask) != len(row):
            raise ValueError(f"row {i}: {len(row)} tokens but a loss mask of {len(mask)}")
        n = len(row)
        ids[i, width - n:] = torch.tensor(list(row), dtype=torch.long)
        attention[i, width - n:] = 1
        loss_mask[i, width - n:] = torch.tensor(list(mask), dtype=torch.long)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attention, positions, loss_mask


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, loss_mask: torch.Tensor,
                   *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 on a left-padded batch: summed -log p of the target tokens (``loss_mask`` = 1) and their count.

    ``loss_mask[:, t]`` marks token t as a target; it is predicted by the logits at t - 1, so position 0 can never
    be a target (every row keeps at least one prompt token).
    """
    if bool(loss_mask[:, 0].any()):
        raise ValueError("causal_lm_loss: a row's first token is marked as a target (it has no prediction)")
    first = int(loss_mask.any(dim=0).nonzero()[0]) if bool(loss_mask.any()) else input_ids.shape[1] - 1
    keep = input_ids.shape[1] - first + 1
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                logits_to_keep=keep)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.shape[1] != keep:  # a forward that ignores logits_to_keep returns every position
        logits = logits[:, -keep:]
    return masked_token_nll(logits[:, :-1], input_ids[:, first:], loss_mask[:, first:], chunk_size=chunk_size)


def step_bce(logits: torch.Tensor, positions: torch.Tensor, step_mask: torch.Tensor,
             targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-head PRM: summed binary cross-entropy at the step ends against (s + 1) / 2, and the number of steps.

    The same loss as :func:`cdra_ray.rewards.prm.prm_step_loss` (which is its mean), as a sum for accumulation.
    """
    from cdra_ray.rewards.prm import prm_step_loss

    count = step_mask.sum()
    return prm_step_loss(logits, positions, step_mask, targets) * count, count


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed -log sigmoid(r_chosen - r_rejected) over pairs, and the number of pairs."""
    return -torch.nn.functional.logsigmoid(chosen.float() - rejected.float()).sum(), torch.tensor(float(len(chosen)))
