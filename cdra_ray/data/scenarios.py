"""Read (preference, query) scenarios from JSONL, checking every line before any model is loaded.

Accepted line shapes (one JSON object per line, UTF-8):
- ``{"id": ..., "preference": ..., "query": ...}`` (the PrefEval-style sample shipped in the package);
- ``{"user_profile": ..., "initial_question": ...}`` (the original DeepPref field names).
``id`` is optional (defaults to ``<file stem>/<line>``). Blank lines are skipped. Any other problem is a
:class:`ScenarioDataError` naming the file and line, so a bad dataset fails in a second, not after an hour.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from cdra_ray.messages import Scenario

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
_FIELD_ALIASES = {"preference": ("preference", "user_profile"), "query": ("query", "initial_question")}


class ScenarioDataError(ValueError):
    """A dataset line that cannot be used; the message names the file and the line."""


def resolve_data_path(path: str) -> Path:
    """``builtin:NAME`` -> the bundled ``samples/NAME.jsonl``; anything else is a file path."""
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        resolved = SAMPLES_DIR / f"{name}.jsonl"
        if not resolved.is_file():
            known = sorted(p.stem for p in SAMPLES_DIR.glob("*.jsonl"))
            raise ScenarioDataError(f"data.path={path!r}: no bundled dataset {name!r} (bundled: {known})")
        return resolved
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ScenarioDataError(f"data.path={path!r}: file not found")
    return resolved


def _field(record: dict, name: str, where: str) -> str:
    for key in _FIELD_ALIASES[name]:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise ScenarioDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ScenarioDataError(f"{where}: field {key!r} is empty")
            return value.strip()
    raise ScenarioDataError(f"{where}: missing field {name!r} (accepted names: {list(_FIELD_ALIASES[name])})")


def load_scenarios(path: str | Path, max_scenarios: int | None = None) -> list[Scenario]:
    """All scenarios of a JSONL file, in file order, with ``index`` = position in that order."""
    file = resolve_data_path(str(path))
    raw = file.read_bytes()
    scenarios: list[Scenario] = []
    seen_ids: dict[str, int] = {}
    for line_no, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{file}:{line_no}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ScenarioDataError(f"{where}: not valid UTF-8 (byte {err.start}): {err.reason}") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScenarioDataError(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from None
        if not isinstance(record, dict):
            raise ScenarioDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        uid = str(record.get("id", f"{file.stem}/{line_no}"))
        if uid in seen_ids:
            raise ScenarioDataError(f"{where}: duplicate id {uid!r} (first on line {seen_ids[uid]})")
        seen_ids[uid] = line_no
        scenarios.append(Scenario(uid=uid, preference=_field(record, "preference", where),
                                  query=_field(record, "query", where), index=len(scenarios)))
    if not scenarios:
        raise ScenarioDataError(f"{file}: no scenarios (the file is empty)")
    return scenarios[:max_scenarios] if max_scenarios else scenarios


@dataclass
class ScenarioOrder:
    """An endless, reproducible order over the scenarios: a fresh seeded shuffle per epoch.

    The cursor (``consumed``) is all a resume needs: the order of epoch e is a pure function of (seed, e).
    """

    scenarios: list[Scenario]
    seed: int = 0
    shuffle: bool = True
    consumed: int = 0

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.scenarios)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> Scenario:
        epoch, offset = divmod(self.consumed, len(self.scenarios))
        self.consumed += 1
        return self.scenarios[self._epoch_order(epoch)[offset]]
