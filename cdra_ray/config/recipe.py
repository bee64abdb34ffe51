"""``recipe:`` section: the paper's stages as one resumable run (``cdra-ray recipe``, :mod:`cdra_ray.recipe`).

Each stage is a ``cdra-ray`` subcommand (or, for tests and user extensions, a Python script) run as a
subprocess with ``--config <the same preset> <overrides>``. Arguments may hold placeholders, filled by the
recipe: ``{run_dir}``, ``{stage_dir}`` (this stage's subdirectory), ``{train_data}`` / ``{heldout_data}`` (the
scenario split written once by the recipe), ``{config}`` (the preset path) and ``{<stage>_dir}`` for every stage.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RecipeStage:
    name: str = "???"
    command: Optional[str] = None  # a cdra-ray subcommand: construct | sft | train | evaluate | prm-eval ...
    script: Optional[str] = None  # or a Python script run with the recipe's interpreter (tests, extensions)
    args: List[str] = field(default_factory=list)  # arguments before --config (e.g. ["--task", "prm"])
    overrides: List[str] = field(default_factory=list)  # key=value after --config
    outputs: List[str] = field(default_factory=list)  # paths under the stage dir that a finished stage has written
    resume_if: Optional[str] = None  # path under the stage dir: when it exists, an incomplete stage resumes ...
    resume_overrides: List[str] = field(default_factory=list)  # ... with these overrides (else it restarts clean)
    enabled: bool = True


@dataclass
class RecipeConfig:
    run_dir: Optional[str] = None  # None = <run.output_dir>/<run.name>
    heldout_fraction: float = 0.2  # share of scenarios (by id) that no stage trains on; evaluation uses them
    max_heldout: Optional[int] = None  # cap on the held-out scenarios (small CPU demos)
    split_seed: int = 0
    stages: List[RecipeStage] = field(default_factory=list)
    python: Optional[str] = None  # interpreter of the stage subprocesses; None = the one running the recipe


def check_recipe_config(cfg: RecipeConfig) -> None:
    from cdra_ray.config.loading import ConfigError

    if not 0.0 < cfg.heldout_fraction < 1.0:
        raise ConfigError(f"recipe.heldout_fraction={cfg.heldout_fraction}: must be in (0, 1)")
    if cfg.max_heldout is not None and cfg.max_heldout < 1:
        raise ConfigError(f"recipe.max_heldout={cfg.max_heldout}: must be >= 1 or null")
    names = [s.name for s in cfg.stages]
    for i, stage in enumerate(cfg.stages):
        where = f"recipe.stages[{i}]"
        if not stage.name or stage.name == "???" or not stage.name.replace("_", "").isalnum():
            raise ConfigError(f"{where}.name={stage.name!r}: must be a word of letters, digits and _")
        if names.count(stage.name) > 1:
            raise ConfigError(f"{where}.name={stage.name!r}: stage names must be unique")
        if (stage.command is None) == (stage.script is None):
            raise ConfigError(f"{where} ({stage.name}): set exactly one of command (a cdra-ray subcommand) or script")
        if stage.name in ("split",):
            raise ConfigError(f"{where}.name={stage.name!r}: reserved for the recipe's own data split")
