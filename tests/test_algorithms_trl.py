"""Cross-check against TRL 1.16's GRPOTrainer, running TRL's own code on identical tensors.

A real ``GRPOTrainer`` is built on a 1-layer Llama (hidden 64) with a tokenizer trained in-process. Advantages
come from TRL's ``_generate_and_score_completions`` (it really samples, then scores with a reward function
that returns the rewards we choose); the loss from TRL's ``_compute_loss`` with its log-prob forward replaced
by the tensors we choose, so both sides see exactly the same numbers.

Where they agree (asserted below):
- ``grpo`` advantages with ``eps=1e-4`` == TRL ``scale_rewards="group"``; ``scale=False`` == ``"none"``.
- loss ``seq-mean-token-mean`` == TRL ``loss_type="grpo"``; ``token-mean`` == ``"bnpo"`` and ``"dapo"`` (one
  batch, no gradient accumulation); ``seq-mean-token-sum`` == ``"dr_grpo"`` x ``max_completion_length``
  (Dr. GRPO divides the token sum by a constant instead of N); for each, with and without beta (k3 KL),
  symmetric and asymmetric clipping (``epsilon_high`` == ``clip_eps_high``), per-sequence (B,) and per-token
  (B, T) advantages, and truncated importance weights (TRL ``token_truncate`` ratio == ours). Gradients w.r.t.
  the log-probs, the KL metric and the clip ratio ("region") agree too.
Where they differ (by design; asserted where cheap):
- TRL's eps is fixed at 1e-4 (``std + 1e-4``); ours defaults to 1e-6 (DESIGN.md §3).
- A group whose rewards are all equal: TRL returns ``(r - mean) / 1e-4``, which is round-off (possibly
  non-zero); ours is exactly 0, so the zero-advantage rate is exact.
- TRL ``scale_rewards="batch"`` (std over the whole batch) has no counterpart: our estimators see one group.
- Unscorable completions: TRL turns a None reward into NaN, leaves it out of the baseline and gives it
  advantage 0; we raise ValueError on NaN rewards (the reward service applies its default first, counted).
- G = 1: TRL silently yields zero advantages; we raise ValueError.
- TRL computes advantages in float32; we compute in float64 (agreement to ~1e-6).
- KL: TRL 1.16 defaults to ``use_bias_correction_kl=True`` (k3 x rho, DeepSeek-V3.2); ours defaults to the
  paper's plain k3 and offers ``kl_ratio_correction=True``, which matches TRL's default (asserted both ways).
- Not offered here: TRL's sequence-level importance sampling (GSPO), ``delta`` two-sided clipping, the
  ``cispo``/``sapo``/``vespo``/``luspo`` losses, and a lower clip on the importance weight.
"""

from __future__ import annotations

import pytest
import torch

from cdra_ray.algorithms.advantages import compute_advantages
from cdra_ray.algorithms.policy_loss import cdpa_policy_loss

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

G = 4  # generations per prompt
MAX_COMPLETION = 6


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the user prefers quiet gardens and Step 1: walks"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                         pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    rewards = {"values": [0.0] * (2 * G)}

    def reward_fn(prompts, completions, **kwargs):
        return list(rewards["values"][: len(prompts)])

    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=2 * G,
                      num_generations=G, max_completion_length=MAX_COMPLETION, use_cpu=True, report_to=[],
                      bf16=False, beta=0.0, save_strategy="no", logging_steps=1)
    dataset = Dataset.from_dict({"prompt": ["the user", "quiet gardens"] * G})
    t = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset, processing_class=hf_tok)
    t.reward_values = rewards
    return t


def _trl_advantages(trainer, rewards: list[float], scale_rewards: str) -> torch.Tensor:
    trainer.reward_values["values"] = rewards
    trainer.scale_rewards = scale_rewards
    inputs = [{"prompt": "the user"}] * G + [{"prompt": "quiet gardens"}] * G
    out = trainer._generate_and_score_completions(inputs)
    return out["advantages"].detach().double()


def _ours_grpo(rewards: list[float], **options) -> torch.Tensor:
    values = []
    for g in range(0, len(rewards), G):
        r = torch.tensor(rewards[g: g + G], dtype=torch.float64)[:, None]
        adv = compute_advantages("grpo", r, torch.ones(G, 1, dtype=torch.bool), torch.zeros(G, 1, dtype=torch.long),
                                 torch.ones(G, 1, dtype=torch.bool), eps=1e-4, **options)
        values.append(adv[:, 0])
    return torch.cat(values)


@pytest.mark.parametrize("seed", range(4))
def test_grpo_advantages_match_trl(trainer, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.randint(-4, 5, (2 * G,), generator=g).double() / 4).tolist()  # coarse: ties happen
    if rewards[:G] == [rewards[0]] * G:
        rewards[0] += 1.0
    theirs = _trl_advantages(trainer, rewards, "group")
    assert torch.allclose(_ours_grpo(rewards), theirs, atol=1e-6, rtol=1e-5)
    theirs = _trl_advantages(trainer, rewards, "none")
    assert torch.allclose(_ours_grpo(rewards, scale=False), theirs, atol=1e-6)


def test_grpo_hand_case_against_trl(trainer):
    # group 1: [0.3, -1, 0.8, 0.8]: mean 0.225, dev .075 -1.225 .575 .575, var 2.1675/3 = .7225, std .85
    #          -> .075/.8501 = 0.088225 ... ; group 2 all equal (0.1): TRL round-off vs our exact 0
    rewards = [0.3, -1.0, 0.8, 0.8, 0.1, 0.1, 0.1, 0.1]
    theirs = _trl_advantages(trainer, rewards, "group")
    ours = _ours_grpo(rewards)
    assert ours[:G].tolist() == pytest.approx([0.075 / 0.8501, -1.225 / 0.8501, 0.575 / 0.8501, 0.575 / 0.8501])
    assert torch.allclose(ours[:G], theirs[:G], atol=1e-6)
    assert (ours[G:] == 0).all()  # exact
    assert theirs[G:].abs().max() < 1e-2  # TRL: (0.1 - mean) / (std + 1e-4), round-off over 1e-4


# ----------------------------------------------------------------------------------------------- loss
def _batch(seed: int, per_token_adv: bool):
    g = torch.Generator().manual_seed(seed)
    B, C = 2 * G, MAX_COMPLETION
    lengths = torch.randint(1, C + 1, (B,), generator=g)
    mask = (torch.arange(C)[None] < lengths[:, None]).long()
    old = -torch.rand(B, C, generator=g) * 3
    logp = (old + torch.randn(B, C, generator=g) * 0.3).requires_grad_(True)
    ref = old + torch.randn(B, C, generator=g) * 0.3
    behaviour = old + torch.randn(B, C, generator=g) * 0.4
    adv = torch.randn(B, C, generator=g) if per_token_adv else torch.randn(B, generator=g)
    return logp, old, ref, behaviour, adv, mask


def _trl_loss(trainer, logp, old, ref, behaviour, adv, mask, *, loss_type, beta, eps_high, cap, kl_correction):
    """Run TRL's own _compute_loss on these tensors (its log-prob forward returns ``logp``)."""
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.args.use_bias_correction_kl = kl_correction
    trainer.epsilon_low, trainer.epsilon_high = 0.2, eps_high
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = cap is not None
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.eval()  # no gradient-accumulation scaling
    trainer._metrics["eval"].clear()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    B, C = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, C, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    if cap is not None:  # TRL's token_truncate ratio, as _generate_and_score_completions builds it
        inputs["importance_sampling_ratio"] = torch.clamp(torch.exp((old - behaviour) * mask), max=cap)
    try:
        loss = trainer._compute_loss(trainer.model, inputs)
    finally:
        del trainer._get_per_token_logps_and_entropies
    return loss, {k: v[-1] for k, v in trainer._metrics["eval"].items()}


@pytest.mark.parametrize(
    "loss_type, aggregation, factor",
    [("grpo", "seq-mean-token-mean", 1.0), ("bnpo", "token-mean", 1.0), ("dapo", "token-mean", 1.0),
     ("dr_grpo", "seq-mean-token-sum", 1.0 / MAX_COMPLETION)],
)
@pytest.mark.parametrize("beta, eps_high, cap, per_token_adv, kl_correction",
                         [(0.0, 0.2, None, False, False), (0.04, 0.2, None, True, False),
                          (0.04, 0.28, 2.0, True, False), (0.04, 0.2, None, False, True)])
def test_loss_matches_trl(trainer, loss_type, aggregation, factor, beta, eps_high, cap, per_token_adv,
                          kl_correction):
    for seed in range(3):
        logp, old, ref, behaviour, adv, mask = _batch(seed, per_token_adv)
        theirs, metrics = _trl_loss(trainer, logp, old, ref, behaviour, adv, mask, loss_type=loss_type, beta=beta,
                                    eps_high=eps_high, cap=cap, kl_correction=kl_correction)
        (their_grad,) = torch.autograd.grad(theirs, logp)
        adv2d = adv if per_token_adv else adv[:, None].expand_as(logp)
        ours, m = cdpa_policy_loss(logp, old, ref, adv2d, mask.bool(), clip_eps=0.2, clip_eps_high=eps_high,
                                   beta=beta, aggregation=aggregation,
                                   behaviour_logprobs=behaviour if cap is not None else None, importance_cap=cap,
                                   kl_ratio_correction=kl_correction)
        (our_grad,) = torch.autograd.grad(ours, logp)
        assert ours.item() * factor == pytest.approx(theirs.item(), abs=1e-6, rel=1e-5)
        assert torch.allclose(our_grad * factor, their_grad, atol=1e-6)
        assert m["clip_fraction"] == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
        if beta > 0 and not kl_correction:  # TRL logs the corrected KL; our kl_mean is the plain k3 mean
            assert m["kl_mean"] == pytest.approx(metrics["kl"], rel=1e-5)


def test_trl_default_kl_correction_differs_from_plain_k3(trainer):
    """TRL 1.16 defaults to use_bias_correction_kl=True (KL x rho); the paper's plain k3 differs off-policy."""
    logp, old, ref, behaviour, adv, mask = _batch(0, True)
    theirs, _ = _trl_loss(trainer, logp, old, ref, behaviour, adv, mask, loss_type="grpo", beta=0.04, eps_high=0.2,
                          cap=None, kl_correction=True)
    plain, _ = cdpa_policy_loss(logp, old, ref, adv, mask.bool(), beta=0.04, aggregation="seq-mean-token-mean")
    assert abs(plain.item() - theirs.item()) > 1e-4
