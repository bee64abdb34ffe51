"""``cdra-ray recipe``: the paper end to end (construct -> SFT of the critic -> RFT of the policy -> CDPA ->
evaluate, with the GRPO and RFT baselines) as one resumable run directory.

    run_recipe(load_config("recipe_cpu_demo"), preset="recipe_cpu_demo")

1. The scenarios (``data.path``) are split once, by scenario id, into ``split/train.jsonl`` and
   ``split/heldout.jsonl``; every stage receives the paths (``{train_data}``, ``{heldout_data}``), so the
   held-out pairs the evaluation uses were never seen by construction, SFT or RL.
2. Each stage of ``recipe.stages`` runs, in order, as a subprocess of its ``cdra-ray`` command
   (``python -m cdra_ray.cli COMMAND ARGS --config PRESET USER_OVERRIDES STAGE_OVERRIDES``) with its output in
   ``<run_dir>/<stage name>/`` and its log in ``<run_dir>/<stage name>.log``. Before anything runs, every
   stage's command must exist in this checkout: a stage whose command has not landed fails the recipe at once,
   naming it, instead of being faked.
3. A finished stage writes ``.stage_done.json`` (times, command) into its directory. A rerun skips a stage whose
   marker and declared ``outputs`` all exist; any other stage reruns: it resumes when its ``resume_if`` path
   exists (with ``resume_overrides``, e.g. ``run.resume=true``), else its directory is cleared first.

Under ``ray job submit`` (``launch/ray_job.py recipe --config ...``) the stages inherit ``RAY_ADDRESS`` and
join the same cluster.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from cdra_ray.config import Config, ConfigError
from cdra_ray.config.loading import resolve_preset
from cdra_ray.config.recipe import RecipeStage

log = logging.getLogger(__name__)

MARKER = ".stage_done.json"
REPO = Path(__file__).resolve().parents[1]
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RecipeError(RuntimeError):
    """A stage that cannot run, failed, or finished without its outputs; names the stage and its log."""


def recipe_dir(config: Config) -> Path:
    return Path(config.recipe.run_dir or Path(config.run.output_dir) / config.run.name).expanduser()


# ----------------------------------------------------------------------------------------------- the split
def split_ids(ids: Sequence[str], heldout_fraction: float, seed: int, max_heldout: int | None = None
              ) -> tuple[list[str], list[str]]:
    """(train, held-out) ids: a seeded shuffle of the sorted ids (independent of file order), the first
    ``round(fraction * n)`` (at least 1, at most ``max_heldout``, never all) held out."""
    if len(ids) < 2:
        raise ConfigError(f"recipe: {len(ids)} scenario(s) cannot be split into training and held-out sets")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    k = min(max(1, round(heldout_fraction * len(order))), len(order) - 1)
    if max_heldout is not None:
        k = min(k, max_heldout)
    held = set(order[:k])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def write_split(config: Config, run_dir: Path) -> dict[str, str]:
    """Write the split once (a rerun keeps the existing one, so stages never see a different partition)."""
    from cdra_ray.data.scenarios import load_scenarios, resolve_data_path

    split_dir = run_dir / "split"
    paths = {"train_data": str(split_dir / "train.jsonl"), "heldout_data": str(split_dir / "heldout.jsonl")}
    if (split_dir / MARKER).is_file():
        return paths
    source = resolve_data_path(config.data.path)
    scenarios = load_scenarios(source, config.data.max_scenarios)  # every line checked first
    train, held = split_ids([s.uid for s in scenarios], config.recipe.heldout_fraction, config.recipe.split_seed,
                            config.recipe.max_heldout)
    records = {}  # every field of a line is kept (topic ...); the id is written out so it cannot shift
    text = source.read_text(encoding="utf-8").removeprefix("\ufeff")
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            record = json.loads(line)
            uid = str(record.get("id", f"{source.stem}/{line_no}"))
            records[uid] = json.dumps({**record, "id": uid})
    split_dir.mkdir(parents=True, exist_ok=True)
    for key, ids in (("train_data", train), ("heldout_data", held)):
        Path(paths[key]).write_text("".join(records[i] + "\n" for i in ids), encoding="utf-8")
    (split_dir / MARKER).write_text(json.dumps({"source": str(source), "train": len(train), "heldout": len(held),
                                                "seed": config.recipe.split_seed}), encoding="utf-8")
    log.info("recipe split: %d training / %d held-out scenarios in %s", len(train), len(held), split_dir)
    return paths


# ----------------------------------------------------------------------------------------------- stages
def cli_commands() -> set[str]:
    """The subcommands of ``cdra-ray`` in this checkout."""
    import argparse

    from cdra_ray.cli import _parser

    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def check_stages(stages: Sequence[RecipeStage]) -> None:
    """Fail before anything runs when a stage's command or script does not exist."""
    commands = cli_commands()
    for i, stage in enumerate(stages):
        if stage.command is not None and stage.command not in commands:
            raise RecipeError(
                f"recipe.stages[{i}] ({stage.name}): `cdra-ray {stage.command}` does not exist in this checkout "
                f"(commands: {', '.join(sorted(commands))}). That stage has not landed here yet; the recipe will "
                f"not fake it. Disable it with recipe.stages[{i}].enabled=false if its outputs come from elsewhere.")
        if stage.script is not None and not Path(stage.script).is_file():
            raise RecipeError(f"recipe.stages[{i}] ({stage.name}): script {stage.script} not found")


def fill(text: str, context: dict[str, str], where: str) -> str:
    """Replace ``{name}`` placeholders (other braces, e.g. YAML flow maps, are left alone)."""
    def sub(match: re.Match) -> str:
        if match.group(1) not in context:
            raise ConfigError(f"{where}: unknown placeholder {{{match.group(1)}}} in {text!r} "
                              f"(known: {', '.join(sorted(context))})")
        return context[match.group(1)]
    return _PLACEHOLDER.sub(sub, text)


def stage_complete(stage: RecipeStage, stage_dir: Path) -> bool:
    return (stage_dir / MARKER).is_file() and all((stage_dir / o).exists() for o in stage.outputs)


def stage_argv(stage: RecipeStage, index: int, context: dict[str, str], python: str, preset: str | None,
               user_overrides: Sequence[str], resuming: bool) -> list[str]:
    where = f"recipe.stages[{index}] ({stage.name})"
    head = [python, stage.script] if stage.script else [python, "-m", "cdra_ray.cli", stage.command]
    extra = list(stage.overrides) + (list(stage.resume_overrides) if resuming else [])
    return (head + [fill(a, context, where) for a in stage.args] + (["--config", preset] if preset else [])
            + list(user_overrides) + [fill(o, context, where) for o in extra])


def _run(argv: list[str], log_path: Path) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with open(log_path, "a", encoding="utf-8") as logf:
        logf.write(f"\n$ {' '.join(argv)}\n")
        logf.flush()
        return subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()).returncode


def run_recipe(config: Config, *, preset: str | None = None, overrides: Sequence[str] = (),
               runner: Callable[[list[str], Path], int] = _run) -> list[dict]:
    """Run every enabled stage in order (see the module docstring); returns one status dict per stage and writes
    them to ``<run_dir>/recipe_status.json``."""
    stages = [s for s in config.recipe.stages if s.enabled]
    if not stages:
        raise ConfigError("recipe.stages: no enabled stage")
    check_stages(stages)
    preset_path = str(resolve_preset(preset)) if preset else None
    user_overrides = [o for o in overrides if not o.startswith("recipe.")]
    run_dir = recipe_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    context = {"run_dir": str(run_dir), "config": preset_path or "", **write_split(config, run_dir)}
    context.update({f"{s.name}_dir": str(run_dir / s.name) for s in config.recipe.stages})
    python = config.recipe.python or sys.executable
    status = []
    for index, stage in enumerate(config.recipe.stages):
        if not stage.enabled:
            continue
        stage_dir = run_dir / stage.name
        entry = {"stage": stage.name, "dir": str(stage_dir)}
        if stage_complete(stage, stage_dir):
            marker = json.loads((stage_dir / MARKER).read_text(encoding="utf-8"))
            log.info("recipe: %s already complete (%s), skipped", stage.name, marker.get("finished"))
            status.append({**entry, "state": "skipped", "seconds": marker.get("seconds")})
            continue
        (stage_dir / MARKER).unlink(missing_ok=True)
        resuming = bool(stage.resume_if) and (stage_dir / stage.resume_if).exists()
        if stage_dir.exists() and not resuming:
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        argv = stage_argv(stage, index, {**context, "stage_dir": str(stage_dir)}, python, preset_path,
                          user_overrides, resuming)
        log_path = run_dir / f"{stage.name}.log"
        log.info("recipe: %s %s (log: %s)", stage.name, "resuming" if resuming else "running", log_path)
        start = time.time()
        code = runner(argv, log_path)
        seconds = time.time() - start
        if code != 0:
            raise RecipeError(f"recipe stage {stage.name} failed (exit code {code}) after {seconds:.0f} s; "
                              f"see {log_path}. Rerun the same command to resume from this stage.")
        missing = [o for o in stage.outputs if not (stage_dir / o).exists()]
        if missing:
            raise RecipeError(f"recipe stage {stage.name} exited 0 but did not write {missing} in {stage_dir}; "
                              f"see {log_path}")
        (stage_dir / MARKER).write_text(json.dumps({
            "stage": stage.name, "argv": argv, "seconds": round(seconds, 1), "resumed": resuming,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1), encoding="utf-8")
        log.info("recipe: %s done in %.0f s", stage.name, seconds)
        status.append({**entry, "state": "resumed" if resuming else "ran", "seconds": round(seconds, 1)})
    (run_dir / "recipe_status.json").write_text(json.dumps(status, indent=1), encoding="utf-8")
    return status
