"""Learner pure parts: batch building, log-prob computation, the DeepSpeed config dict (no DeepSpeed run)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from cdra_ray.learner.batch import build_batch, micro_batches
from cdra_ray.learner.deepspeed_config import build_deepspeed_config
from cdra_ray.learner.logprobs import response_logprobs, shared_prompt_logprobs, token_logprobs
from cdra_ray.messages import Group, Sample, Scenario, StepScore


def _group(uid, prompt, responses, steps, scores, version, ref=None, sampling=True):
    samples = [
        Sample(response_text="x", response_token_ids=list(r),
               sampling_logprobs=[-0.5 - 0.1 * k for k in range(len(r))] if sampling else [])
        for r in responses
    ]
    return Group(
        scenario=Scenario(uid=uid, preference="p", query="q"),
        prompt_token_ids=list(prompt),
        samples=samples,
        policy_version=version,
        token_steps=[list(s) for s in steps],
        step_scores=[[StepScore(0, 1, v) for v in row] for row in scores],
        ref_logprobs=_padded(ref) if ref else None,
    )


def _padded(rows):
    """(G, C) float32, 0 beyond each row: the layout of Group.ref_logprobs."""
    out = torch.zeros(len(rows), max(len(r) for r in rows))
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


def _two_groups(with_ref=True):
    a = _group("a", [1, 2, 3], [[4, 5], [6, 7, 8, 9]], [[0, 1], [0, 0, 1, 2]], [[0.5, -0.5], [1.0, 0.0, -1.0]], 3,
               ref=[[-1.0, -2.0], [-3.0, -4.0, -5.0, -6.0]] if with_ref else None)
    b = _group("b", [10, 11], [[16], [17, 18, 19]], [[0], [0, 0, 0]], [[0.25], [0.75]], 2,
               ref=[[-7.0], [-8.0, -9.0, -10.0]] if with_ref else None)
    return [a, b]


# ------------------------------------------------------------------------------------------------ batch
def test_build_batch_pads_prompts_left_responses_right():
    # P = longest prompt = 3, C = longest response = 4, S = most steps = 3; pad id 0
    batch = build_batch(_two_groups(), pad_token_id=0)
    assert torch.equal(batch.input_ids, torch.tensor([
        [1, 2, 3, 4, 5, 0, 0],
        [1, 2, 3, 6, 7, 8, 9],
        [0, 10, 11, 16, 0, 0, 0],
        [0, 10, 11, 17, 18, 19, 0],
    ]))
    assert torch.equal(batch.attention_mask, torch.tensor([
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0],
    ]))
    # positions count real tokens only: a left-padded prompt starts at 0 like an unpadded one
    assert torch.equal(batch.position_ids, torch.tensor([
        [0, 1, 2, 3, 4, 0, 0],
        [0, 1, 2, 3, 4, 5, 6],
        [0, 0, 1, 2, 0, 0, 0],
        [0, 0, 1, 2, 3, 4, 0],
    ]))
    assert batch.prompt_width == 3 and batch.response_width == 4
    assert torch.equal(batch.response_ids, torch.tensor([[4, 5, 0, 0], [6, 7, 8, 9], [16, 0, 0, 0], [17, 18, 19, 0]]))
    assert torch.equal(batch.response_mask, torch.tensor([
        [True, True, False, False], [True, True, True, True], [True, False, False, False], [True, True, True, False],
    ]))
    assert torch.equal(batch.token_steps, torch.tensor([[0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.equal(batch.step_rewards, torch.tensor([
        [0.5, -0.5, 0.0], [1.0, 0.0, -1.0], [0.25, 0.0, 0.0], [0.75, 0.0, 0.0],
    ]))
    assert torch.equal(batch.step_mask, torch.tensor([
        [True, True, False], [True, True, True], [True, False, False], [True, False, False],
    ]))
    assert torch.equal(batch.ref_logprobs, torch.tensor([
        [-1.0, -2.0, 0.0, 0.0], [-3.0, -4.0, -5.0, -6.0], [-7.0, 0.0, 0.0, 0.0], [-8.0, -9.0, -10.0, 0.0],
    ]))
    # sampling log-probs are -0.5 - 0.1 k at token k
    assert torch.allclose(batch.sampling_logprobs[1], torch.tensor([-0.5, -0.6, -0.7, -0.8]))
    assert batch.sampling_logprobs[0, 2:].abs().sum() == 0
    assert torch.equal(batch.policy_versions, torch.tensor([3, 3, 2, 2]))
    assert batch.group_slices == [slice(0, 2), slice(2, 4)]
    assert torch.equal(batch.group_ids, torch.tensor([0, 0, 1, 1]))


def test_select_trims_all_pad_columns():
    batch = build_batch(_two_groups(), pad_token_id=0)
    sub = batch.select([2, 3])
    # group b alone: prompt width 2 (one left pad column dropped), response width 3, one step
    assert torch.equal(sub.input_ids, torch.tensor([[10, 11, 16, 0, 0], [10, 11, 17, 18, 19]]))
    assert torch.equal(sub.position_ids, torch.tensor([[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]))
    assert torch.equal(sub.response_mask, torch.tensor([[True, False, False], [True, True, True]]))
    assert torch.equal(sub.step_rewards, torch.tensor([[0.25], [0.75]]))
    assert torch.equal(sub.ref_logprobs, torch.tensor([[-7.0, 0.0, 0.0], [-8.0, -9.0, -10.0]]))
    assert sub.prompt_width == 2 and sub.group_slices == []
    assert torch.equal(sub.group_ids, torch.tensor([1, 1]))  # the rows still know their group


def test_batch_without_ref_or_sampling_logprobs_gives_none():
    groups = _two_groups(with_ref=False)
    groups[1] = dataclasses.replace(groups[1], samples=[dataclasses.replace(s, sampling_logprobs=[])
                                                        for s in groups[1].samples])
    batch = build_batch(groups)
    assert batch.ref_logprobs is None
    assert batch.sampling_logprobs is None


def test_reference_mode_needs_no_rewards():
    groups = [dataclasses.replace(g, token_steps=[], step_scores=[]) for g in _two_groups()]
    batch = build_batch(groups, require_rewards=False)
    assert batch.step_mask.shape == (4, 1) and not batch.step_mask.any()
    with pytest.raises(ValueError, match="token_steps"):
        build_batch(groups)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g[0].token_steps.__setitem__(0, [0, 2]), "token_steps range"),
        (lambda g: g[0].token_steps.__setitem__(0, [0]), "token_steps has 1 entries"),
        (lambda g: g.__setitem__(1, g[1].with_ref_logprobs(None)), "missing on groups \\[1\\]"),
        (lambda g: g.__setitem__(1, g[1].with_ref_logprobs(torch.zeros(2, 2))), "ref_logprobs has shape"),
        (lambda g: g[0].samples[1].sampling_logprobs.pop(), "sampling_logprobs has 3 entries"),
        (lambda g: g[1].step_scores.__setitem__(0, []), "step_scores is empty"),
    ],
)
def test_build_batch_rejects_inconsistent_groups(mutate, message):
    groups = _two_groups()
    mutate(groups)
    with pytest.raises(ValueError, match=message):
        build_batch(groups)


def test_micro_batches_follow_order_and_size():
    assert micro_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert micro_batches(4, 3, torch.tensor([3, 1, 0, 2])) == [[3, 1, 0], [2]]
    with pytest.raises(ValueError, match="micro_batch_size"):
        micro_batches(3, 0)


# ------------------------------------------------------------------------------------------------ log-probs
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equals_naive_loop(chunk_size, temperature):
    gen = torch.Generator().manual_seed(chunk_size)
    logits = torch.randn(3, 5, 11, generator=gen) * 3
    targets = torch.randint(0, 11, (3, 5), generator=gen)
    got = token_logprobs(logits, targets, chunk_size=chunk_size, temperature=temperature)
    for i in range(3):
        for t in range(5):
            expected = torch.log_softmax(logits[i, t] / temperature, dim=-1)[targets[i, t]]
            assert torch.allclose(got[i, t], expected, atol=1e-6)


def test_token_logprobs_gradient_matches_log_softmax():
    logits = torch.randn(2, 4, 7, requires_grad=True)
    targets = torch.randint(0, 7, (2, 4))
    token_logprobs(logits, targets, chunk_size=3).sum().backward()
    chunked = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, targets[..., None]).sum().backward()
    assert torch.allclose(chunked, logits.grad, atol=1e-6)


def test_token_logprobs_rejects_misaligned_shapes():
    with pytest.raises(ValueError, match="do not align"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_response_logprobs_on_padded_batch_equal_unpadded_loop():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=32, intermediate_size=128, vocab_size=40, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    groups = _two_groups()
    batch = build_batch(groups)
    got = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_ids,
                            chunk_size=2)
    row = 0
    with torch.no_grad():
        for group in groups:
            for sample in group.samples:
                ids = group.prompt_token_ids + sample.response_token_ids
                logits = model(torch.tensor([ids])).logits[0]
                p = len(group.prompt_token_ids)
                for t, token in enumerate(sample.response_token_ids):
                    # the logits at position p + t - 1 predict response token t
                    expected = torch.log_softmax(logits[p + t - 1], -1)[token]
                    assert torch.allclose(got[row, t], expected, atol=1e-5), (row, t)
                row += 1


def _tiny_llama(seed=0, vocab=40):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=32, intermediate_size=128, vocab_size=vocab, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def test_shared_prompt_logprobs_and_gradients_equal_one_forward_per_row():
    # Three groups (two prompt lengths, ragged responses, rows of groups interleaved) through both paths.
    g = torch.Generator().manual_seed(1)
    groups = []
    for k, prompt_len in enumerate((5, 3, 5)):
        prompt = torch.randint(1, 40, (prompt_len,), generator=g).tolist()
        responses = [torch.randint(1, 40, (n,), generator=g).tolist() for n in (4, 1, 6)]
        groups.append(_group(f"g{k}", prompt, responses, [[0] * len(r) for r in responses],
                             [[0.0] for _ in responses], 0))
    batch = build_batch(groups, pad_token_id=0)
    rows = torch.tensor([0, 3, 6, 1, 4, 7, 2, 5, 8])  # groups interleaved: the result must follow row order
    sub = batch.select(rows)
    mask = sub.response_mask.float()
    results = []
    for compute in ("per_row", "shared"):
        model = _tiny_llama()
        if compute == "per_row":
            lp = response_logprobs(model, sub.input_ids, sub.attention_mask, sub.position_ids, sub.response_ids,
                                   temperature=0.7)
        else:
            lp = shared_prompt_logprobs(model, sub.input_ids, sub.attention_mask, sub.response_ids, sub.group_ids,
                                        temperature=0.7)
        (lp * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((lp.detach() * mask, grads))
    (per_row, grads_a), (shared, grads_b) = results
    assert torch.allclose(per_row, shared, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name


def test_shared_prompt_logprobs_runs_each_distinct_prompt_once():
    calls = []
    model = _tiny_llama().eval()
    model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    groups = [_group("a", [1, 2, 3], [[4, 5], [6], [7, 8, 9]], [[0, 0], [0], [0, 0, 0]], [[0.0]] * 3, 0),
              _group("b", [5, 6], [[4, 5], [6]], [[0, 0], [0]], [[0.0]] * 2, 0)]
    batch = build_batch(groups, pad_token_id=0)
    with torch.no_grad():
        shared_prompt_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_ids, batch.group_ids)
    # per prompt: one pass over the prompt alone (batch 1), one over its rows' responses (width C = 3)
    assert calls == [(1, 3), (3, 3), (1, 2), (2, 3)]


# ------------------------------------------------------------------------------------------------ DeepSpeed config
def test_deepspeed_config_stage2_fp32_torch_adamw():
    cfg = build_deepspeed_config(zero_stage=2, micro_batch_size=4, gradient_accumulation_steps=3, world_size=2,
                                 max_grad_norm=0.5, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)
    assert cfg["train_batch_size"] == 24  # 4 per micro-batch x 3 accumulation steps x 2 ranks
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"] == {"stage": 2, "contiguous_gradients": True, "overlap_comm": False}
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": 2e-5, "betas": [0.9, 0.95], "eps": 1e-8,
                                                            "weight_decay": 0.1, "torch_adam": True,
                                                            "adam_w_mode": True}}
    assert cfg["managed_gradient_accumulation"] is False
    assert "bf16" not in cfg and "fp16" not in cfg
    assert "zero_force_ds_cpu_optimizer" not in cfg


def test_deepspeed_config_stage3_bf16_offload_allows_torch_adam():
    cfg = build_deepspeed_config(zero_stage=3, micro_batch_size=1, precision="bf16", offload_optimizer="cpu",
                                 offload_params="cpu", max_grad_norm=None)
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["gradient_clipping"] == 0.0  # None = no clipping
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu"} and zero["offload_param"] == {"device": "cpu"}
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    # DeepSpeed refuses a non-DeepSpeed optimizer with offload unless told otherwise
    assert cfg["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_config_stage0_has_only_the_stage():
    cfg = build_deepspeed_config(zero_stage=0, micro_batch_size=2)
    assert cfg["zero_optimization"] == {"stage": 0}
    assert cfg["train_batch_size"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zero_stage": 4}, "zero_stage"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"lr": 0.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"offload_params": "cpu", "zero_stage": 2}, "offload_params"),
        ({"offload_optimizer": "cpu", "zero_stage": 0}, "offload_optimizer"),
        ({"offload_optimizer": "nvme", "zero_stage": 2}, "offload_optimizer"),
        ({"overlap_comm": True, "zero_stage": 3}, "overlap_comm"),
    ],
)
def test_deepspeed_config_rejects_bad_arguments(kwargs, message):
    args = {"zero_stage": 1, "micro_batch_size": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_deepspeed_config(**args)


def test_importing_the_learner_package_does_not_import_deepspeed_or_vllm():
    code = ("import sys, cdra_ray.learner, cdra_ray.learner.weight_sync_gpu; "
            "print(sorted(m for m in ('deepspeed', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
