"""D_Rea and D_RFT records (the files ``cdra-ray construct`` writes), checked line by line before any model loads.

``d_rea.jsonl``: one record per (scenario, path, step j) -- the Pers-GenPRM SFT set of paper §2.2-2.3::

    {"id": "<scenario id>/p<path>/s<j>", "scenario_id", "preference", "query",
     "steps": [step 1 text, ..., step j text], "critique": str, "score": float in [-1, 1]}

``d_rft.jsonl``: one record per scenario -- the best path in the policy's inference format (§2.4 step 1), and
the worst surviving one for a Bradley-Terry reward model::

    {"id", "preference", "query", "steps": [...], "final_answer", "response", "path_score",
     "rejected_response": str | null, "rejected_score": float | null}

The held-out split is by scenario, never by step or path: all steps of a scenario land on the same side, so a
critic is never evaluated on a step whose earlier steps (same prompt prefix, same critique style) it trained on.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cdra_ray.data.scenarios import SAMPLES_DIR, iter_jsonl_objects

log = logging.getLogger(__name__)

SAMPLE_FILES = {"d_rea": "deeppref_sample_d_rea.jsonl", "d_rft": "deeppref_sample_d_rft.jsonl"}
TASK_DATA = {"prm": "d_rea", "prm_head": "d_rea", "rft": "d_rft", "scalar_rm": "d_rft"}


class SFTDataError(ValueError):
    """A record that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class ReaRecord:
    """One D_Rea example: critique and score of step j given (P, q, steps 1..j)."""

    uid: str
    scenario_id: str
    preference: str
    query: str
    steps: tuple[str, ...]
    critique: str
    score: float

    @property
    def path_id(self) -> str:
        """``<scenario id>/p<path>``: the records of one path share it (the id minus its ``/s<j>``)."""
        return self.uid.rsplit("/", 1)[0]

    @property
    def step_index(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class RftRecord:
    """One D_RFT example: the best path of a scenario as a policy response (and the worst, for a scalar RM)."""

    uid: str
    preference: str
    query: str
    steps: tuple[str, ...]
    response: str
    path_score: float
    rejected_response: str | None
    rejected_score: float | None

    @property
    def scenario_id(self) -> str:
        return self.uid


def _text(record: dict, key: str, where: str, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise SFTDataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise SFTDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise SFTDataError(f"{where}: field {key!r} is empty")
    return value


def _number(record: dict, key: str, where: str, low: float | None = None, high: float | None = None,
            nullable: bool = False) -> float | None:
    value = record.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SFTDataError(f"{where}: field {key!r} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SFTDataError(f"{where}: field {key!r}={value} lies outside [{low}, {high}]")
    return float(value)


def _steps(record: dict, where: str) -> tuple[str, ...]:
    steps = record.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SFTDataError(f"{where}: field 'steps' must be a non-empty list of strings")
    for k, step in enumerate(steps, start=1):
        if not isinstance(step, str) or not step.strip():
            raise SFTDataError(f"{where}: steps[{k - 1}] (step {k}) must be a non-empty string")
    return tuple(steps)


def _rea(record: dict, where: str) -> ReaRecord:
    uid = _text(record, "id", where)
    scenario_id = _text(record, "scenario_id", where)
    steps = _steps(record, where)
    if not uid.startswith(scenario_id + "/") or not uid.rsplit("/", 1)[-1] == f"s{len(steps)}":
        raise SFTDataError(f"{where}: id {uid!r} must be '<scenario_id>/p<path>/s<j>' with scenario_id "
                           f"{scenario_id!r} and j = len(steps) = {len(steps)}")
    return ReaRecord(uid=uid, scenario_id=scenario_id, preference=_text(record, "preference", where),
                     query=_text(record, "query", where), steps=steps, critique=_text(record, "critique", where),
                     score=float(_number(record, "score", where, -1.0, 1.0)))


def _rft(record: dict, where: str) -> RftRecord:
    rejected = record.get("rejected_response")
    if rejected is not None and (not isinstance(rejected, str) or not rejected.strip()):
        raise SFTDataError(f"{where}: field 'rejected_response' must be a non-empty string or null")
    return RftRecord(uid=_text(record, "id", where), preference=_text(record, "preference", where),
                     query=_text(record, "query", where), steps=_steps(record, where),
                     response=_text(record, "response", where),
                     path_score=float(_number(record, "path_score", where)),
                     rejected_response=rejected,
                     rejected_score=_number(record, "rejected_score", where, nullable=True))


PARSERS = {"d_rea": _rea, "d_rft": _rft}


def load_records(path: str | Path, kind: str) -> list:
    """Every record of a ``d_rea`` or ``d_rft`` JSONL file, in order; any bad line raises naming file:line."""
    if kind not in PARSERS:
        raise ValueError(f"record kind must be one of {sorted(PARSERS)}, got {kind!r}")
    file = Path(path)
    if not file.is_file():
        raise SFTDataError(f"{file}: file not found (sft.data)")
    records, seen = [], {}
    for line_no, where, record in iter_jsonl_objects(file, SFTDataError):
        parsed = PARSERS[kind](record, where)
        if parsed.uid in seen:
            raise SFTDataError(f"{where}: duplicate id {parsed.uid!r} (first on line {seen[parsed.uid]})")
        seen[parsed.uid] = line_no
        records.append(parsed)
    if not records:
        raise SFTDataError(f"{file}: no records (the file is empty)")
    return records


def split_by_scenario(records: Sequence, heldout_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held-out): a seeded choice of whole scenarios, at least one on each side; record order kept."""
    scenarios = sorted({r.scenario_id for r in records})
    if len(scenarios) < 2:
        raise SFTDataError(f"a held-out split by scenario needs at least 2 scenarios, the data has {len(scenarios)}")
    random.Random(seed).shuffle(scenarios)
    count = min(max(1, round(heldout_fraction * len(scenarios))), len(scenarios) - 1)
    heldout = set(scenarios[:count])
    return [r for r in records if r.scenario_id not in heldout], [r for r in records if r.scenario_id in heldout]


def resolve_data_file(data: str | None, task: str, construct_dir: Path | None) -> Path:
    """``sft.data`` if given (a path or ``builtin:NAME``); else the construct output's file for the task if it
    exists; else the bundled hand-written sample."""
    kind = TASK_DATA[task]
    if data:
        if data.startswith("builtin:"):
            path = SAMPLES_DIR / f"{data.split(':', 1)[1]}.jsonl"
        else:
            path = Path(data).expanduser()
        if not path.is_file():
            raise SFTDataError(f"sft.data={data!r}: file not found")
        return path
    if construct_dir is not None and (construct_dir / f"{kind}.jsonl").is_file():
        return construct_dir / f"{kind}.jsonl"
    sample = SAMPLES_DIR / SAMPLE_FILES[kind]
    log.info("no %s.jsonl in %s: using the bundled sample %s", kind, construct_dir, sample.name)
    return sample


def rea_paths(records: Sequence[ReaRecord]) -> list[tuple[ReaRecord, list[float]]]:
    """Whole paths from step records: (the record of the path's last step, the scores of steps 1..T).

    A path whose step records are not exactly s1..sT with matching step prefixes is an error naming it.
    """
    by_path: dict[str, dict[int, ReaRecord]] = {}
    for r in records:
        by_path.setdefault(r.path_id, {})[r.step_index] = r
    out = []
    for path_id, steps in by_path.items():
        last = steps[max(steps)]
        if sorted(steps) != list(range(1, len(last.steps) + 1)):
            raise SFTDataError(f"path {path_id!r}: step records {sorted(steps)} do not cover 1..{len(last.steps)}")
        for j, r in steps.items():
            if r.steps != last.steps[:j]:
                raise SFTDataError(f"record {r.uid!r}: its steps are not a prefix of the path's step {len(last.steps)}")
        out.append((last, [steps[j].score for j in range(1, len(last.steps) + 1)]))
    return out
