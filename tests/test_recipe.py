"""The recipe: one split by scenario id, stages as subprocesses with placeholders filled, resume skips complete
stages and reruns an incomplete one, a missing stage command fails before anything runs. Fake stages are tiny
Python scripts (no models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdra_ray.config import ConfigError, load_config
from cdra_ray.recipe import MARKER, RecipeError, run_recipe, split_ids

# A fake stage: writes its argv and the outputs named on its command line; "fail" in argv makes it exit 1
# before writing; "partial" writes only the first output.
FAKE = """
import json, sys, pathlib
argv = sys.argv[1:]
out = pathlib.Path(argv[argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
runs = out / "runs.txt"
runs.write_text(runs.read_text() + "run\\n" if runs.exists() else "run\\n")
if "fail" in argv:
    sys.exit(1)
names = argv[argv.index("--files") + 1].split(",")
for name in names[:1] if "partial" in argv else names:
    (out / name).write_text(json.dumps(argv))
"""


def _config(tmp_path, stages, extra=(), more=""):
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE)
    items = []
    for i, (name, files, flags) in enumerate(stages):
        items.append("{name: %s, script: '%s', args: ['--out', '{stage_dir}', '--files', '%s', '--train', "
                     "'{train_data}', '--prev', '{run_dir}'%s], outputs: [%s]%s}"
                     % (name, script, files, "".join(f", '{f}'" for f in flags), files, more))
    overrides = [f"recipe.run_dir={tmp_path / 'run'}", "recipe.stages=[" + ", ".join(items) + "]",
                 "data.max_scenarios=20", "recipe.heldout_fraction=0.25", f"recipe.python={sys.executable}", *extra]
    return load_config(None, overrides)


def _runs(tmp_path, stage):
    return (tmp_path / "run" / stage / "runs.txt").read_text().count("run")


def test_split_is_by_id_seeded_and_disjoint():
    ids = [f"s{i}" for i in range(40)]
    train, held = split_ids(ids, 0.25, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and set(train) | set(held) == set(ids)
    assert split_ids(list(reversed(ids)), 0.25, seed=3)[1] == list(reversed(held))  # same ids, any file order
    assert split_ids(ids, 0.25, seed=4)[1] != held
    assert len(split_ids(ids, 0.25, seed=3, max_heldout=4)[1]) == 4


def test_stages_run_in_order_with_the_split_and_resume_skips_finished_ones(tmp_path):
    config = _config(tmp_path, [("first", "a.json", ()), ("second", "b.json,c.json", ())])
    status = run_recipe(config)
    assert [s["state"] for s in status] == ["ran", "ran"]
    run = tmp_path / "run"
    train = (run / "split" / "train.jsonl").read_text().splitlines()
    held = (run / "split" / "heldout.jsonl").read_text().splitlines()
    assert (len(train), len(held)) == (15, 5)
    assert not {json.loads(l)["id"] for l in train} & {json.loads(l)["id"] for l in held}
    argv = json.loads((run / "second" / "b.json").read_text())
    assert argv[argv.index("--train") + 1] == str(run / "split" / "train.jsonl")  # placeholders filled
    assert argv[argv.index("--out") + 1] == str(run / "second")
    marker = json.loads((run / "first" / MARKER).read_text())
    stamp = (run / "first" / MARKER).stat().st_mtime_ns

    status = run_recipe(config)  # everything complete: nothing reruns
    assert [s["state"] for s in status] == ["skipped", "skipped"]
    assert _runs(tmp_path, "first") == 1 and _runs(tmp_path, "second") == 1
    assert (run / "first" / MARKER).stat().st_mtime_ns == stamp
    assert json.loads((run / "first" / MARKER).read_text()) == marker

    (run / "second" / "c.json").unlink()  # an output went missing: that stage (only) reruns, from a clean dir
    status = run_recipe(config)
    assert [s["state"] for s in status] == ["skipped", "ran"]
    assert _runs(tmp_path, "first") == 1 and _runs(tmp_path, "second") == 1  # cleared, then ran once
    assert (run / "second" / "c.json").is_file()


def test_a_stopped_stage_reruns_and_later_stages_wait(tmp_path):
    failing = _config(tmp_path, [("first", "a.json", ()), ("second", "b.json", ("fail",)), ("third", "c.json", ())])
    with pytest.raises(RecipeError, match="second failed .*second.log"):
        run_recipe(failing)
    run = tmp_path / "run"
    assert (run / "first" / MARKER).is_file() and not (run / "second" / MARKER).exists()
    assert not (run / "third").exists()
    partial = _config(tmp_path, [("first", "a.json", ()), ("second", "b.json,x.json", ("partial",))])
    with pytest.raises(RecipeError, match=r"did not write \['x.json'\]"):
        run_recipe(partial)
    assert not (run / "second" / MARKER).exists()
    fixed = _config(tmp_path, [("first", "a.json", ()), ("second", "b.json", ()), ("third", "c.json", ())])
    status = run_recipe(fixed)
    assert [s["state"] for s in status] == ["skipped", "ran", "ran"]


def test_incomplete_stage_resumes_with_its_resume_overrides_when_its_state_exists(tmp_path):
    config = _config(tmp_path, [("first", "a.json,b.json", ("partial",))],
                     more=", resume_if: runs.txt, resume_overrides: ['run.resume=true']")
    with pytest.raises(RecipeError):
        run_recipe(config)
    with pytest.raises(RecipeError):
        run_recipe(config)  # resumed: runs.txt kept (2 runs), resume override passed
    text = (tmp_path / "run" / "first" / "a.json").read_text()
    assert "run.resume=true" in text and _runs(tmp_path, "first") == 2


def test_missing_stage_command_fails_before_anything_runs(tmp_path):
    config = load_config(None, [f"recipe.run_dir={tmp_path / 'run'}",
                                "recipe.stages=[{name: build, command: no-such-stage}]"])
    with pytest.raises(RecipeError, match="cdra-ray no-such-stage` does not exist"):
        run_recipe(config)
    assert not (tmp_path / "run").exists()


def test_unknown_placeholder_and_bad_stage_config_name_the_key(tmp_path):
    config = load_config(None, [f"recipe.run_dir={tmp_path / 'run'}",
                                "recipe.stages=[{name: s, command: config, overrides: ['x={nope_dir}']}]"])
    with pytest.raises(ConfigError, match=r"recipe.stages\[0\].*nope_dir"):
        run_recipe(config)
    with pytest.raises(ConfigError, match=r"recipe.stages\[0\]"):
        load_config(None, ["recipe.stages=[{name: s}]"])  # neither command nor script


@pytest.mark.parametrize("preset", ["recipe_cpu_demo", "recipe_paper"])
def test_recipe_presets_load_and_chain_the_paper_stages(preset):
    config = load_config(preset)
    names = [s.name for s in config.recipe.stages]
    assert names[:4] == ["construct", "sft_prm", "sft_rft", "cdpa"] and {"grpo", "evaluate"} <= set(names)
    stages = {s.name: s for s in config.recipe.stages}
    assert "algorithm.advantage=grpo" in stages["grpo"].overrides
    assert any("{heldout_data}" in o for o in stages["evaluate"].overrides)
    assert all("{heldout_data}" not in o for s in config.recipe.stages if s.name != "evaluate" for o in s.overrides)
    assert config.evaluate.judge.model


def test_ray_job_entry_runs_the_named_command(tmp_path):
    """``launch/ray_job.py`` (what ``ray job submit`` runs) takes a command; without one it trains."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "launch" / "ray_job.py"), "recipe", "--config", "tiny_test",
                          f"recipe.run_dir={tmp_path}", "recipe.stages=[{name: s, command: construct-xyz}]"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "cdra-ray construct-xyz` does not exist" in out.stderr


@pytest.mark.e2e
def test_recipe_runs_the_real_evaluate_command_on_the_held_out_split(tmp_path):
    """One real stage (``cdra-ray evaluate``, tiny model as policy and judge on transformers) through the recipe:
    the split's held-out pairs are what gets evaluated, the stage's outputs and marker are written, and a rerun
    skips it."""
    stage = ("{name: evaluate, command: evaluate, outputs: [table.md, table.csv, radar.png, summary.json], "
             "overrides: ['evaluate.output_dir={stage_dir}', 'evaluate.data={heldout_data}']}")
    overrides = [f"recipe.run_dir={tmp_path / 'run'}", f"recipe.stages=[{stage}]", "data.max_scenarios=10",
                 "recipe.heldout_fraction=0.3", f"recipe.python={sys.executable}", "evaluate.engine=hf",
                 "evaluate.judge.engine=hf", "evaluate.judge.model=tiny-llama", "evaluate.max_new_tokens=8",
                 "evaluate.judge.max_new_tokens=8", "evaluate.judge.agreement_samples=0",
                 "evaluate.methods=[{name: cot, kind: cot}]", "evaluate.bootstrap_samples=20",
                 "evaluate.progress_bar=false"]
    config = load_config("tiny_test", overrides)
    status = run_recipe(config, preset="tiny_test", overrides=overrides)
    assert [s["state"] for s in status] == ["ran"]
    run = tmp_path / "run"
    held = {json.loads(l)["id"] for l in (run / "split" / "heldout.jsonl").read_text().splitlines()}
    evaluated = {json.loads(l)["scenario_id"] for l in (run / "evaluate" / "responses.jsonl").read_text().splitlines()}
    assert len(held) == 3 and evaluated == held
    assert (run / "evaluate" / MARKER).is_file() and "cdra_ray.cli" in (run / "evaluate.log").read_text()
    assert [s["state"] for s in run_recipe(config, preset="tiny_test", overrides=overrides)] == ["skipped"]
