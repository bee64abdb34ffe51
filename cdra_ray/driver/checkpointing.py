"""Checkpoints of a run, all in one place: layout, atomic writes, the learner's parts, pruning and resume.

``<run>/checkpoints/update_000003/`` holds

- ``policy/``: the HF-format policy (``save_pretrained``; transformers and vLLM load it),
- ``learner_state/``: DeepSpeed's checkpoint of weights, optimizer moments and RNG states, plus the
  learner's ``policy_version`` (the run's one version counter),
- ``driver_state.json``: the data cursor (scenarios drawn), the scenarios in flight when it was written (the
  resumed run relaunches them first), stale-drop count and the uids trained so far.

Every directory is written under a scratch name and renamed into place (:func:`atomic_directory`);
``<run>/checkpoints/latest`` (replaced atomically) names the newest complete one. A crash or SIGKILL at any
moment leaves the previous checkpoint intact and ``latest`` pointing at it; a scratch left behind is removed
by the next save. Only the newest ``keep`` checkpoints stay on disk.

Resume (:func:`find_resume_point`, :func:`restore_learner`): the learner loads ``learner_state`` and reports the
version it restored, which must be the one ``driver_state.json`` recorded; the rollout engines start from
``policy/`` and receive that version with their first weights (the driver publishes before it generates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

STATE_TAG = "state"  # DeepSpeed's tag inside learner_state/
_UPDATE_DIR = re.compile(r"^update_(\d{6,})$")


@dataclass
class DriverState:
    policy_version: int = 0  # updates applied so far (the learner's counter at the time of the checkpoint)
    consumed: int = 0  # scenarios drawn from the data order
    pending: list[int] = field(default_factory=list)  # scenario indices drawn but not trained on yet
    dropped_stale: int = 0
    trained_uids: list[str] = field(default_factory=list)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


# ------------------------------------------------------------------------------------------ atomic writes
def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _distributed() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # the driver side needs no torch
        return False
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``target`` only when the block finishes without an exception.

    A crash inside the block leaves ``target`` untouched and removes the scratch (a SIGKILL leaves the scratch,
    which the next write to ``target`` removes). The swap is two renames; should the process die between them,
    ``target`` is missing and the previous version sits at :func:`previous_path` — readers look there. Under
    torch.distributed every rank must enter; rank 0 does the file work.
    """
    target = Path(target)
    scratch = target.with_name(f".{target.name}.partial")
    previous = previous_path(target)
    rank0 = not _distributed() or _rank() == 0
    sync = _barrier if _distributed() else (lambda: None)
    if rank0:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
    sync()
    try:
        yield scratch
        sync()
    except BaseException:
        if rank0:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    if rank0:
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            os.rename(target, previous)
        os.rename(scratch, target)
        shutil.rmtree(previous, ignore_errors=True)
    sync()


def previous_path(target: str | Path) -> Path:
    """Where :func:`atomic_directory` parks the old version of ``target`` during the swap."""
    target = Path(target)
    return target.with_name(f".{target.name}.previous")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ the learner's parts
def write_policy(learner, directory: str | Path) -> Path:
    """The learner's policy as an HF model directory (safetensors + config + tokenizer). Atomic."""
    directory = Path(directory)
    # every rank enters (barriers); only rank 0 writes, and the others gather only where ZeRO-3 needs them
    state = learner.export_weights() if _rank() == 0 or learner.settings.zero_stage == 3 else None
    with atomic_directory(directory) as scratch:
        if not _distributed() or _rank() == 0:
            learner.model.save_pretrained(str(scratch), state_dict=state)
            if learner.tokenizer is not None:
                learner.tokenizer.save_pretrained(str(scratch))
    return directory


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_learner_state(learner, directory: str | Path) -> Path:
    """Everything the learner needs to continue exactly: fp32 weights, optimizer moments, RNG states and
    ``policy_version``, through DeepSpeed's own checkpoint (it knows how ZeRO partitions them). Atomic."""
    directory = Path(directory)
    client_state = {"policy_version": learner.policy_version, "rng": _rng_state(),
                    "settings_model_dir": learner.settings.model_dir}
    with atomic_directory(directory) as scratch:
        learner.engine.save_checkpoint(str(scratch), tag=STATE_TAG, client_state=client_state, save_latest=False)
    return directory


def read_learner_state(learner, directory: str | Path) -> int:
    """Restore a :func:`write_learner_state` directory into ``learner``; returns the restored ``policy_version``."""
    directory = Path(directory)
    if not directory.is_dir() and previous_path(directory).is_dir():
        log.warning("%s is missing but %s exists (a save was interrupted mid-swap); loading that",
                    directory, previous_path(directory))
        directory = previous_path(directory)
    if not (directory / STATE_TAG).is_dir():
        raise FileNotFoundError(f"{str(directory)!r} is not a learner state directory (no {STATE_TAG!r} inside; "
                                "it is written by write_learner_state)")
    load_path, client_state = learner.engine.load_checkpoint(
        str(directory), tag=STATE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None or client_state is None:
        raise RuntimeError(f"DeepSpeed could not load the learner state from {str(directory)!r}")
    learner.policy_version = int(client_state["policy_version"])
    _set_rng_state(client_state["rng"])
    return learner.policy_version


# ------------------------------------------------------------------------------------------ run checkpoints
def save_checkpoint(run_dir: Path, update: int, state: DriverState,
                    write_learner: Callable[[Path, Path], None], keep: int = 0) -> Path:
    """``write_learner(policy_dir, learner_state_dir)`` fills the learner parts; then the whole update directory
    is renamed in and ``latest`` moved to it. ``keep`` > 0 deletes all but the newest ``keep`` checkpoints."""
    root = checkpoints_dir(run_dir)
    final = root / f"update_{update:06d}"
    with atomic_directory(final) as scratch:
        write_learner(scratch / "policy", scratch / "learner_state")
        (scratch / "driver_state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    _atomic_write_text(root / "latest", final.name)
    if keep > 0:
        prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete complete checkpoints older than the newest ``keep`` (never the one ``latest`` names)."""
    latest = latest_checkpoint(run_dir)
    found = sorted(p for p in checkpoints_dir(run_dir).iterdir() if _UPDATE_DIR.match(p.name))
    removed = [p for p in found[:-keep] if p != latest] if keep > 0 else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = checkpoints_dir(run_dir)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    if not (path / "driver_state.json").exists() and previous_path(path).is_dir():
        path = previous_path(path)  # killed between the two renames of a re-write
    return path if (path / "driver_state.json").exists() else None


def load_driver_state(checkpoint: Path) -> DriverState:
    return DriverState(**json.loads((checkpoint / "driver_state.json").read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------ resume
def find_resume_point(run_dir: Path) -> tuple[Path, DriverState] | None:
    """The newest complete checkpoint of ``run_dir`` and its driver state, or None when there is none."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    return checkpoint, load_driver_state(checkpoint)


def restore_learner(learner_handle, checkpoint: Path, state: DriverState) -> None:
    """Load the learner actor's state from ``checkpoint``; its version must be the one the driver recorded."""
    import ray

    version = ray.get(learner_handle.load_state.remote(str(checkpoint / "learner_state")))
    if version != state.policy_version:
        raise RuntimeError(f"{checkpoint}: the learner state is at policy version {version} but driver_state.json "
                           f"records {state.policy_version}; the checkpoint is inconsistent")
