"""The SFT losses on tensors and a tiny Llama (no DeepSpeed): hand computation, exactly-zero gradients on masked
tokens and pads, left-padding invariance, and agreement with TRL's SFTTrainer (completion-only loss)."""

from __future__ import annotations

import math

import pytest
import torch

from cdra_ray.sft.losses import bradley_terry, causal_lm_loss, collate_left, masked_token_nll


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdra_ray.models.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("sft_loss") / "m", hidden=64, layers=2, heads=2, seed=1)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
    return path, model, AutoTokenizer.from_pretrained(str(path))


ROWS = [[5, 9, 14, 3, 7, 11], [8, 2, 6, 12]]  # prompt + target token ids
MASKS = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1]]


def test_masked_nll_equals_hand_computation():
    # one row, vocabulary of 3; positions 0..2 predict targets [2, 0, 1]; position 0 is masked out.
    logits = torch.tensor([[[0.0, 0.0, 5.0], [1.0, 2.0, 3.0], [0.0, math.log(3.0), 0.0]]])
    targets = torch.tensor([[2, 0, 1]])
    mask = torch.tensor([[0, 1, 1]])
    # position 1: -log(e^1 / (e^1 + e^2 + e^3)); position 2: -log(3 / (1 + 3 + 1)) = -log(0.6)
    expected = -(1.0 - math.log(math.e + math.e ** 2 + math.e ** 3)) - math.log(0.6)
    total, count = masked_token_nll(logits, targets, mask)
    assert count == 2 and total.item() == pytest.approx(expected, abs=1e-6)


def test_bradley_terry_equals_hand_computation():
    total, count = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5]))
    expected = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))
    assert count == 2 and total.item() == pytest.approx(expected, abs=1e-6)


def test_masked_and_padded_tokens_get_exactly_zero_gradient(tiny):
    _, model, tok = tiny
    model.zero_grad(set_to_none=True)
    ids, attention, positions, loss_mask = collate_left(ROWS, MASKS, tok.pad_token_id)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    logits.retain_grad()
    total, count = masked_token_nll(logits[:, :-1], ids[:, 1:], loss_mask[:, 1:])
    (total / count).backward()
    grad = logits.grad.abs().sum(dim=-1)  # (B, L): gradient reaching the logits of each position
    predicts_target = torch.zeros_like(loss_mask, dtype=torch.bool)
    predicts_target[:, :-1] = loss_mask[:, 1:].bool()
    assert torch.all(grad[~predicts_target] == 0)  # prompt, pad and last positions: exactly zero
    assert torch.all(grad[predicts_target] > 0)
    # the pad token occurs only at padded positions: its embedding row gets exactly zero gradient
    emb_grad = model.get_input_embeddings().weight.grad
    assert torch.all(emb_grad[tok.pad_token_id] == 0) and emb_grad[ROWS[0][0]].abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_keep_only_target_logits_and_left_padding_change_nothing(tiny):
    _, model, tok = tiny
    with torch.no_grad():
        ids, attention, positions, loss_mask = collate_left(ROWS, MASKS, tok.pad_token_id)
        batched, count = causal_lm_loss(model, ids, attention, positions, loss_mask)
        full = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        reference, _ = masked_token_nll(full[:, :-1], ids[:, 1:], loss_mask[:, 1:])
        alone = sum(causal_lm_loss(model, *collate_left([r], [m], tok.pad_token_id))[0] for r, m in zip(ROWS, MASKS))
    assert count == 5
    assert batched.item() == pytest.approx(reference.item(), rel=1e-6)
    assert batched.item() == pytest.approx(alone.item(), rel=1e-5)


def test_loss_matches_trl_sft_trainer_completion_only(tiny, tmp_path):
    """Same tokens, same completion masks: our token-mean loss == TRL 1.16 SFTTrainer.compute_loss."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    path, model, tok = tiny
    rows = [{"input_ids": r, "completion_mask": m} for r, m in zip(ROWS, MASKS)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), completion_only_loss=True, use_cpu=True, report_to=[],
                         per_device_train_batch_size=2, max_length=None, bf16=False, dataset_num_proc=None)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items()})
        total, count = causal_lm_loss(model, *collate_left(ROWS, MASKS, tok.pad_token_id))
    assert count == 5
    assert (total / count).item() == pytest.approx(float(theirs), rel=1e-5)
