"""The DeepSpeed learner on CPU with a tiny Llama: updates, ZeRO stages, HF checkpoints, exact resume, crash safety.

One process-wide gloo group (world of one) is created by the first learner and shared by the others.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest
import torch

from cdra_ray.driver.checkpointing import read_learner_state, write_learner_state, write_policy
from cdra_ray.messages import Group, Sample, Scenario, StepScore

pytestmark = pytest.mark.deepspeed


@pytest.fixture(scope="module", autouse=True)
def _isolated_env(tmp_path_factory):
    """DeepSpeed's op builds (if any) into a temp dir; a free MASTER_PORT for the first process group."""
    import torch.distributed as dist

    from cdra_ray.learner.learner import free_port

    saved = {k: os.environ.get(k) for k in ("TORCH_EXTENSIONS_DIR", "MASTER_PORT")}
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_ext"))
    if not (dist.is_available() and dist.is_initialized()):
        os.environ["MASTER_PORT"] = str(free_port())
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from cdra_ray.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=64, layers=2, heads=2, seed=0)


def make_groups(num_groups: int, *, group_size: int = 5, seed: int = 0, vocab: int = 300) -> list[Group]:
    """Random prompts/responses of uneven lengths, 1-3 steps each, distinct step scores (non-zero advantages)."""
    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(4, 9))]
        samples, token_steps, scores = [], [], []
        for _ in range(group_size):
            length = rng.randint(3, 14)
            num_steps = rng.randint(1, 3)
            samples.append(Sample("x", [rng.randrange(5, vocab) for _ in range(length)], [-1.0] * length))
            token_steps.append([min(t * num_steps // length, num_steps - 1) for t in range(length)])
            scores.append([StepScore(0, 1, round(rng.uniform(-1, 1), 3)) for _ in range(num_steps)])
        groups.append(Group(Scenario(f"s{g}", "p", "q"), prompt, samples, 0, token_steps=token_steps,
                            step_scores=scores))
    return groups


def make_learner(model_dir: Path, **overrides):
    from cdra_ray.learner import Learner, LearnerSettings

    settings = dict(model_dir=str(model_dir), lr=1e-3, micro_batch_size=5, num_threads=2, seed=0, beta=0.0)
    settings.update(overrides)
    return Learner(LearnerSettings(**settings))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------------ updates
def test_two_cdpa_updates_change_weights_with_finite_loss(tiny_dir):
    learner = make_learner(tiny_dir, zero_stage=0)
    before = learner.export_weights()
    groups = make_groups(2)
    first = learner.train_on_groups(groups)
    after_one = learner.export_weights()
    second = learner.train_on_groups(groups)
    after_two = learner.export_weights()
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in (first, second))
    assert first["policy_version"] == 1.0 and second["policy_version"] == 2.0 and learner.policy_version == 2
    assert max_diff(before, after_one) > 1e-4 and max_diff(after_one, after_two) > 1e-4
    # the first update sees pi_theta == pi_old: every ratio is exactly 1, so nothing is clipped
    assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0 and first["clip_fraction"] == 0.0
    assert first["grad_norm"] > 0 and first["zero_advantage_rate"] == 0.0
    assert first["num_samples"] == 10.0
    # exported tensors are standalone copies in HF names
    assert "model.embed_tokens.weight" in before
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in before.values())
    learner.close()


def test_auto_dtype_is_resolved_where_the_model_loads(tiny_dir, monkeypatch):
    """``model.dtype: auto`` reaches the learner and the reference unresolved; each resolves it on its own node (here
    forced to a bf16 host). Many small AdamW steps still move the bf16 weights: DeepSpeed keeps fp32 master copies,
    so steps smaller than a bf16 rounding step add up instead of vanishing."""
    from cdra_ray.learner import ReferencePolicy

    monkeypatch.setattr("cdra_ray.engines.catalog.host_dtype", lambda fallback="float32": "bfloat16")
    learner = make_learner(tiny_dir, dtype="auto", lr=2e-5, zero_stage=0)
    assert learner.settings.dtype == "bfloat16"
    before = learner.export_weights()
    assert {t.dtype for t in before.values()} == {torch.bfloat16}
    groups = make_groups(1, seed=3)
    for _ in range(15):
        metrics = learner.train_on_groups(groups)
        assert torch.isfinite(torch.tensor(metrics["loss"]))
    after = learner.export_weights()
    changed = sum(int((after[k] != before[k]).sum()) for k in before) / sum(t.numel() for t in before.values())
    assert changed > 0.2  # 0.37 here; plain bf16 AdamW (no master copy) changes 0.03: its steps round away
    learner.close()
    reference = ReferencePolicy(tiny_dir, "auto", num_threads=2)
    assert {p.dtype for p in reference.model.parameters()} == {torch.bfloat16}


def test_kl_is_zero_at_first_step_when_reference_equals_policy(tiny_dir):
    from cdra_ray.learner import ReferencePolicy

    groups = make_groups(1, seed=1)
    reference = ReferencePolicy(tiny_dir, "float32", num_threads=2, micro_batch_size=2)
    groups = reference.annotate(groups)
    assert tuple(groups[0].ref_logprobs.shape) == (5, max(len(s.response_token_ids) for s in groups[0].samples))
    learner = make_learner(tiny_dir, zero_stage=0, beta=0.5)
    first = learner.train_on_groups(groups)
    second = learner.train_on_groups(groups)
    # k3 KL = exp(r) - r - 1 with r = log pi_ref - log pi_theta = 0 (up to float noise of two padded layouts)
    assert abs(first["kl_mean"]) < 1e-9 and abs(first["kl_loss"]) < 1e-8
    assert second["kl_mean"] > 1e-6  # after one update the policy has moved away from the reference
    learner.close()


def test_sharing_the_prompt_forward_changes_nothing_but_the_compute(tiny_dir):
    from cdra_ray.learner import ReferencePolicy

    groups = make_groups(2, seed=9)
    ref_values = [ReferencePolicy(tiny_dir, "float32", num_threads=2, micro_batch_size=3,
                                  share_prompt_forward=share).logprobs(groups) for share in (True, False)]
    flat = [torch.tensor(v) for values in ref_values for g in values for v in g]
    half = len(flat) // 2
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(flat[:half], flat[half:]))
    groups = [group.with_ref_logprobs(values) for group, values in zip(groups, ref_values[0])]
    runs = []
    for share in (True, False):
        learner = make_learner(tiny_dir, zero_stage=0, beta=0.1, micro_batch_size=3, share_prompt_forward=share)
        before = learner.export_weights()
        metrics = learner.train_on_groups(groups)
        runs.append((metrics, learner.export_weights()))
        learner.close()
    (m_shared, w_shared), (m_plain, w_plain) = runs
    assert m_shared["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=1e-4)
    assert m_shared["pg_loss"] == pytest.approx(m_plain["pg_loss"], abs=1e-6)
    assert m_shared["kl_mean"] == pytest.approx(m_plain["kl_mean"], abs=1e-7)

    def mean_abs(a, b):
        return sum(float((a[k] - b[k]).abs().sum()) for k in a) / sum(a[k].numel() for k in a)

    # Adam's first step is ~lr * sign(grad): float noise flips a few near-zero gradients, nothing more
    assert mean_abs(w_shared, w_plain) < 0.01 * mean_abs(w_plain, before)


def test_missing_reference_with_beta_is_an_error(tiny_dir):
    learner = make_learner(tiny_dir, zero_stage=0, beta=0.1)
    with pytest.raises(ValueError, match="ref_logprobs"):
        learner.train_on_groups(make_groups(1))
    learner.close()


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_zero_stage_steps_on_cpu_and_micro_batching_is_exact(tiny_dir, zero_stage):
    """Accumulating 2-response micro-batches gives the same loss and gradient as one 10-response pass."""
    groups = make_groups(2, seed=2)
    whole = make_learner(tiny_dir, zero_stage=0, micro_batch_size=10, max_grad_norm=0.0)
    split = make_learner(tiny_dir, zero_stage=zero_stage, micro_batch_size=2, max_grad_norm=0.0)
    before = split.export_weights()
    m_whole = whole.train_on_groups(groups)
    m_split = split.train_on_groups(groups)
    assert max_diff(before, split.export_weights()) > 1e-4
    assert m_split["grad_norm"] == pytest.approx(m_whole["grad_norm"], rel=1e-5)
    assert m_split["pg_loss"] == pytest.approx(m_whole["pg_loss"], abs=1e-6)
    whole.close()
    split.close()


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_uncopied_export_packs_each_parameters_own_bytes_and_the_same_values(tiny_dir, zero_stage):
    from cdra_ray.actors.shared_weights import pack_weights, unpack_weights

    learner = make_learner(tiny_dir, zero_stage=zero_stage)
    copies = learner.export_weights()
    packed = pack_weights(learner.export_weights(copy=False).items())
    # under ZeRO-2 the parameters may live in one flat buffer: only each parameter's own bytes are packed
    assert packed.nbytes == sum(t.numel() * t.element_size() for t in copies.values())
    unpacked = dict(unpack_weights(packed))
    assert list(unpacked) == list(copies) and max_diff(unpacked, copies) == 0.0
    if zero_stage == 0:  # views of the live parameters: an update shows through them, not through the copies
        learner.train_on_groups(make_groups(1, seed=8))
        assert max_diff(dict(unpack_weights(packed)), copies) > 1e-4
        assert max_diff(learner.export_weights(), copies) > 1e-4
    learner.close()


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_micro_batch_weights_match_each_aggregation(tiny_dir, aggregation):
    groups = make_groups(1, seed=3)
    whole = make_learner(tiny_dir, micro_batch_size=5, aggregation=aggregation, max_grad_norm=0.0)
    split = make_learner(tiny_dir, micro_batch_size=2, aggregation=aggregation, max_grad_norm=0.0)
    assert split.train_on_groups(groups)["grad_norm"] == pytest.approx(
        whole.train_on_groups(groups)["grad_norm"], rel=1e-5)
    whole.close()
    split.close()


def test_importance_cap_uses_the_engines_sampling_logprobs(tiny_dir):
    learner = make_learner(tiny_dir, importance_cap=2.0)
    groups = make_groups(1, seed=10)
    # sampling log-probs are -1.0 everywhere, far above this random model's ~log(1/512) = -6.2 per token,
    # so pi_old / pi_behaviour = exp(old + 1) is small and never capped
    metrics = learner.train_on_groups(groups)
    assert 0 < metrics["importance_weight_mean"] < 1 and metrics["importance_capped_fraction"] == 0.0
    groups[0] = dataclasses.replace(groups[0], samples=[dataclasses.replace(groups[0].samples[0], sampling_logprobs=[]),
                                                        *groups[0].samples[1:]])
    with pytest.raises(ValueError, match="sampling_logprobs"):
        learner.train_on_groups(groups)
    learner.close()


def test_gradient_checkpointing_gives_the_same_gradient(tiny_dir):
    groups = make_groups(1, seed=9)
    plain = make_learner(tiny_dir, max_grad_norm=0.0)
    checkpointed = make_learner(tiny_dir, max_grad_norm=0.0, gradient_checkpointing=True)
    assert checkpointed.model.is_gradient_checkpointing
    assert checkpointed.train_on_groups(groups)["grad_norm"] == pytest.approx(
        plain.train_on_groups(groups)["grad_norm"], rel=1e-5)
    plain.close()
    checkpointed.close()


def test_several_ppo_epochs_use_pi_old_from_before_the_first_step(tiny_dir):
    learner = make_learner(tiny_dir, ppo_epochs=2, micro_batch_size=3)
    metrics = learner.train_on_groups(make_groups(1, seed=4))
    # two optimizer steps; in the second epoch pi_theta has moved, so some ratio differs from 1
    assert metrics["optimizer_steps"] == 2.0
    assert metrics["ratio_max"] > 1.0 or metrics["ratio_min"] < 1.0
    assert learner.policy_version == 1
    learner.close()


# ------------------------------------------------------------------------------------------------ checkpoints
def test_hf_checkpoint_reloads_with_plain_transformers(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdra_ray.learner.batch import build_batch
    from cdra_ray.learner.logprobs import response_logprobs

    learner = make_learner(tiny_dir, zero_stage=2)
    groups = make_groups(1, seed=5)
    learner.train_on_groups(groups)
    out = write_policy(learner, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(str(out)).eos_token == "<|im_end|>"
    batch = build_batch(groups)
    expected = learner.policy_logprobs(batch)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        got = response_logprobs(reloaded, batch.input_ids, batch.attention_mask, batch.position_ids,
                                batch.response_ids) * batch.response_mask
    assert torch.allclose(got, expected, atol=1e-5)
    # and the checkpoint is not the initial model
    initial = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        before = response_logprobs(initial, batch.input_ids, batch.attention_mask, batch.position_ids,
                                   batch.response_ids) * batch.response_mask
    assert (before - expected).abs().max() > 1e-4
    learner.close()


def test_resume_from_state_matches_uninterrupted_run(tiny_dir, tmp_path):
    first_batch, second_batch = make_groups(1, seed=6), make_groups(1, seed=7)
    run = make_learner(tiny_dir, zero_stage=2)
    run.train_on_groups(first_batch)
    weights_at_save = run.export_weights()
    write_learner_state(run, tmp_path / "state")
    run.train_on_groups(second_batch)
    uninterrupted = run.export_weights()
    run.close()

    resumed = make_learner(tiny_dir, zero_stage=2)
    assert max_diff(resumed.export_weights(), weights_at_save) > 1e-4  # a fresh learner starts elsewhere
    assert read_learner_state(resumed, tmp_path / "state") == 1
    assert max_diff(resumed.export_weights(), weights_at_save) == 0.0
    resumed.train_on_groups(second_batch)
    # same weights after one more step; AdamW's moments were restored too (without them step 2 would be
    # another sign-like first step and differ by ~lr per weight)
    assert max_diff(resumed.export_weights(), uninterrupted) < 1e-6
    assert resumed.policy_version == 2
    resumed.close()


def test_crash_mid_checkpoint_keeps_previous_one(tiny_dir, tmp_path, monkeypatch):
    learner = make_learner(tiny_dir, zero_stage=0)
    groups = make_groups(1, seed=8)
    learner.train_on_groups(groups)
    write_learner_state(learner, tmp_path / "state")
    hf_dir = write_policy(learner, tmp_path / "hf")
    hf_bytes = (hf_dir / "model.safetensors").read_bytes()
    learner.train_on_groups(groups)

    def crash_after_partial_write(save_dir, *args, **kwargs):
        Path(save_dir, "half_written.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")

    monkeypatch.setattr(learner.engine, "save_checkpoint", crash_after_partial_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_learner_state(learner, tmp_path / "state")
    monkeypatch.setattr(learner.model, "save_pretrained", crash_after_partial_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_policy(learner, tmp_path / "hf")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "state"]  # no scratch left behind
    assert (hf_dir / "model.safetensors").read_bytes() == hf_bytes
    monkeypatch.undo()
    assert read_learner_state(learner, tmp_path / "state") == 1
    learner.close()
