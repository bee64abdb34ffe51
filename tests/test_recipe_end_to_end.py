"""The shipped recipe (``recipe_cpu_demo``'s stage list, unchanged) end to end with the tiny model in every role:
construct -> SFT of the critic -> RFT of the policy -> CDPA with that critic -> GRPO -> evaluate. Checks that
each stage consumes what the previous one wrote, that the held-out pairs reach no training stage, and that a
rerun skips finished stages and resumes an incomplete one."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from cdra_ray.config import load_config
from cdra_ray.recipe import MARKER, run_recipe

# Only sizes, models and engines change: the stage list and its path wiring are the preset's own.
TINY = [
    "data.max_scenarios=6", "recipe.heldout_fraction=0.34",
    "model.policy=tiny-llama", "reward.model=tiny-llama", "rollout.engine=hf", "reward.engine=hf", "reward.dtype=float32", "reward.critique_max_tokens=8",
    "reward.max_model_len=2048", "reward.min_requests_for_floor=1",
    "rollout.group_size=3", "rollout.max_new_tokens=24", "rollout.max_prompt_tokens=1024",
    "rollout.max_model_len=1536", "learner.micro_batch_size=3", "learner.lr=1e-3", "train.total_updates=1",
    "construct.max_scenarios=3", "construct.engine=hf", "construct.generator_model=tiny-llama",
    "construct.dtype=float32", "construct.prune_threshold=-1.0", "construct.truncated=keep",
    "construct.thought_max_tokens=8", "construct.answer_max_tokens=8", "construct.critique_max_tokens=6",
    "construct.max_model_len=2048",
    "sft.max_steps=2", "sft.max_length=2048", "sft.micro_batch_size=2", "sft.grad_accum_steps=1", "sft.eval_every=0",
    "evaluate.engine=hf", "evaluate.max_new_tokens=8", "evaluate.judge.engine=hf", "evaluate.judge.model=tiny-llama",
    "evaluate.judge.max_new_tokens=8", "evaluate.judge.agreement_samples=0", "evaluate.bootstrap_samples=20",
    "evaluate.progress_bar=false", "run.progress_bar=false", "run.tensorboard=false",
]


def _ids(path):
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.e2e
def test_the_demo_recipe_chains_every_stage_on_the_tiny_model_and_resumes(tmp_path):
    run = tmp_path / "run"
    overrides = [f"recipe.run_dir={run}", f"recipe.python={sys.executable}", *TINY]
    config = load_config("recipe_cpu_demo", overrides)
    names = [s.name for s in config.recipe.stages]
    assert names == ["construct", "sft_prm", "sft_rft", "cdpa", "grpo", "evaluate"]

    status = run_recipe(config, preset="recipe_cpu_demo", overrides=overrides)
    assert [s["state"] for s in status] == ["ran"] * 6

    # The held-out pairs never reach construction, hence neither SFT set nor RL training data.
    held, train = _ids(run / "split" / "heldout.jsonl"), _ids(run / "split" / "train.jsonl")
    assert len(held) == 2 and len(train) == 4 and not held & train
    trees = [json.loads(line) for line in (run / "construct" / "trees.jsonl").read_text().splitlines()]
    assert {t["id"] for t in trees} <= train and len(trees) == 3
    d_rea = [json.loads(line) for line in (run / "construct" / "d_rea.jsonl").read_text().splitlines()]
    assert d_rea and {r["scenario_id"] for r in d_rea} <= train

    # Each stage consumed its predecessor's output: the critic of CDPA is the SFT'd one, both RL runs start from
    # the RFT policy and trained on the training split only.
    cdpa_cfg = yaml.safe_load((run / "cdpa" / "run" / "config.yaml").read_text())
    grpo_cfg = yaml.safe_load((run / "grpo" / "run" / "config.yaml").read_text())
    assert cdpa_cfg["reward"]["model"] == str(run / "sft_prm" / "final")
    assert cdpa_cfg["reward"]["kind"] == "pers_genprm" and cdpa_cfg["algorithm"]["advantage"] == "cdpa"
    assert grpo_cfg["reward"]["kind"] == "genrm" and grpo_cfg["algorithm"]["advantage"] == "grpo"
    for cfg in (cdpa_cfg, grpo_cfg):
        assert cfg["model"]["policy"] == str(run / "sft_rft" / "final")
        assert cfg["data"]["path"] == str(run / "split" / "train.jsonl")
    for stage in ("cdpa", "grpo"):
        summary = json.loads((run / stage / "run" / "summary.json").read_text())
        assert summary["updates"] == 1

    # The evaluation compares the six methods of Table 1 on the held-out pairs, each from the right checkpoint.
    evaluation = json.loads((run / "evaluate" / "summary.json").read_text())
    assert evaluation["methods"] == ["zero_shot", "few_shot", "cot", "SFT", "GRPO", "CDRA"]
    models = evaluation["models"]
    assert models["SFT"] == str(run / "sft_rft" / "final")
    assert models["CDRA"].startswith(str(run / "cdpa" / "run" / "checkpoints"))
    assert models["GRPO"].startswith(str(run / "grpo" / "run" / "checkpoints"))
    responses = [json.loads(line) for line in (run / "evaluate" / "responses.jsonl").read_text().splitlines()]
    assert {r["scenario_id"] for r in responses} == held and len(responses) == 6 * len(held)
    table = (run / "evaluate" / "table.md").read_text()
    assert all(f"| {name} |" in table for name in models)

    # A rerun skips every finished stage; a stage whose final checkpoint is gone resumes from its saved state.
    finished = (run / "sft_rft" / MARKER).stat().st_mtime
    assert [s["state"] for s in run_recipe(config, preset="recipe_cpu_demo", overrides=overrides)] == ["skipped"] * 6
    assert (run / "sft_rft" / MARKER).stat().st_mtime == finished
    (run / "sft_rft" / "final" / "config.json").unlink()
    states = [s["state"] for s in run_recipe(config, preset="recipe_cpu_demo", overrides=overrides)]
    assert states == ["skipped", "skipped", "resumed", "skipped", "skipped", "skipped"]
    assert (run / "sft_rft" / "final" / "config.json").is_file()
    assert "sft.resume=true" in (run / "sft_rft.log").read_text()
