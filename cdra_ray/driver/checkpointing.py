"""Run directory layout, and checkpoints that a crash can never half-write.

``<run>/checkpoints/update_000003/`` holds the HF-format policy (``policy/``, loadable by transformers and
vLLM), the learner's resume state (``learner_state/``: optimizer, RNG) and the driver's state
(``driver_state.json``: data cursor, policy version, scenarios in flight). It is assembled under a temporary
name and renamed into place in one step; ``<run>/checkpoints/latest`` (itself replaced atomically) names the
newest complete one. A crash at any moment leaves the previous checkpoint intact and ``latest`` pointing at it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class DriverState:
    policy_version: int = 0  # updates applied so far
    consumed: int = 0  # scenarios drawn from the data order
    pending: list[int] = field(default_factory=list)  # scenario indices drawn but not trained on yet
    dropped_stale: int = 0
    trained_uids: list[str] = field(default_factory=list)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, update: int, state: DriverState,
                    write_learner: Callable[[Path, Path], None]) -> Path:
    """``write_learner(policy_dir, learner_state_dir)`` fills the learner parts; then everything is renamed in."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"update_{update:06d}"
    tmp = root / f".tmp_update_{update:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_learner(tmp / "policy", tmp / "learner_state")
    (tmp / "driver_state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = checkpoints_dir(run_dir)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "driver_state.json").exists() else None


def load_driver_state(checkpoint: Path) -> DriverState:
    return DriverState(**json.loads((checkpoint / "driver_state.json").read_text(encoding="utf-8")))
