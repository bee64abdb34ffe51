"""Read (preference, query) scenarios from JSONL, checking every line before any model is loaded.

Accepted line shapes (one JSON object per line, UTF-8):
- ``{"id": ..., "preference": ..., "query": ...}`` (the PrefEval-style sample shipped in the package);
- ``{"user_profile": ..., "initial_question": ...}`` (the original DeepPref field names).
``id`` is optional (defaults to ``<file stem>/<line>``); other keys are ignored. Blank lines are skipped, and so is
a UTF-8 byte-order mark at the start of the file. Any other problem is a :class:`ScenarioDataError` naming the
file and line, so a bad dataset fails in a second, not after an hour. Refused, because each would either crash a
run later or train on something the author did not mean:

- JSON that is not standard (``NaN``/``Infinity``), nested deeper than Python's parser goes, an integer over
  Python's 4,300-digit conversion limit, or an object with the same key twice;
- an ``id`` that is not a non-empty string or an integer (``NaN``, ``1.5``, ``true``, ``""``);
- a text field that is not a string, is empty or invisible (only whitespace, control or zero-width characters),
  holds a control character other than tab/newline/CR (``\u0000`` cuts C strings and tokenizers), holds a lone
  surrogate (``"\ud800"``: it cannot be encoded, so prompt rendering would crash mid-run), or is longer than
  ``data.max_field_chars`` characters;
- both names of one field (``preference`` and ``user_profile``) with different texts.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cdra_ray.messages import Scenario

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode category Cc but tab, LF, CR
_INVISIBLE = re.compile("[\\s\u200b-\u200f\u2060-\u2064\ufeff\u00ad\u034f\u180e]*")  # zero-width and format
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
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise ScenarioDataError(f"data.path={path!r}: file not found") from None
    except OSError as err:
        raise ScenarioDataError(f"data.path={path!r}: cannot access it: {err.strerror}") from None
    except ValueError as err:  # e.g. an embedded NUL character
        raise ScenarioDataError(f"data.path={path!r}: not a usable path: {err}") from None
    if not stat.S_ISREG(mode):
        raise ScenarioDataError(f"data.path={path!r}: is {_file_kind(mode)}, not a regular JSONL file")
    return resolved


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_text(value: str, key: str, where: str, max_chars: int) -> str:
    """``value`` stripped, or an error naming the field: see the module docstring for what is refused."""
    if len(value) > max_chars:
        raise ScenarioDataError(f"{where}: field {key!r} has {len(value):,} characters, more than "
                                f"data.max_field_chars={max_chars:,}")
    bad = _SURROGATE.search(value)
    if bad:
        raise ScenarioDataError(f"{where}: field {key!r} holds a lone surrogate U+{ord(bad.group()):04X} at "
                                f"character {bad.start() + 1} (not encodable text; a broken \\u escape?)")
    bad = _CONTROL.search(value)
    if bad:
        raise ScenarioDataError(f"{where}: field {key!r} holds the control character U+{ord(bad.group()):04X} at "
                                f"character {bad.start() + 1}")
    if not value.strip():
        raise ScenarioDataError(f"{where}: field {key!r} is empty")
    if _INVISIBLE.fullmatch(value):
        raise ScenarioDataError(f"{where}: field {key!r} has no visible character (only whitespace, control or "
                                "zero-width characters)")
    return value.strip()


def _field(record: dict, name: str, where: str, max_chars: int) -> str:
    found = []
    for key in _FIELD_ALIASES[name]:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise ScenarioDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
            found.append((key, _check_text(value, key, where, max_chars)))
    if not found:
        raise ScenarioDataError(f"{where}: missing field {name!r} (accepted names: {list(_FIELD_ALIASES[name])})")
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise ScenarioDataError(f"{where}: fields {found[0][0]!r} and {found[1][0]!r} both name the {name} and "
                                "disagree; keep one")
    return found[0][1]


def _uid(record: dict, default: str, where: str, max_chars: int) -> str:
    if "id" not in record:
        return default
    uid = record["id"]
    if isinstance(uid, int) and not isinstance(uid, bool):
        return str(uid)
    if not isinstance(uid, str):
        raise ScenarioDataError(f"{where}: field 'id' must be a string or an integer, got {type(uid).__name__} "
                                f"{uid!r}")
    return _check_text(uid, "id", where, max_chars)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (not a number in standard JSON)")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    record = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f"the key {key!r} appears twice in one object")
        record[key] = value
    return record


def _parse_line(line: str, where: str, error: type[Exception]):
    try:
        return json.loads(line, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise error(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise error(f"{where}: invalid JSON: nested too deeply for the parser") from None
    except ValueError as err:  # NaN/Infinity, duplicate keys, integers over Python's digit limit
        raise error(f"{where}: invalid JSON: {err}") from None


def iter_jsonl_objects(file: Path, error: type[Exception] = ScenarioDataError) -> Iterator[tuple[int, str, dict]]:
    """(line number, "file:line", object) for every non-blank line of a JSONL file.

    Every problem (unreadable file, bad UTF-8, invalid or hostile JSON, a line that is not an object) raises
    ``error`` naming the file and line; a leading UTF-8 byte-order mark is accepted.
    """
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise error(f"{file}: cannot read it: {err.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (some editors write one)
        raw = raw[3:]
    for line_no, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{file}:{line_no}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{where}: not valid UTF-8 (byte {err.start}): {err.reason}") from None
        if not line.strip():
            continue
        record = _parse_line(line, where, error)
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield line_no, where, record


def load_scenarios(path: str | Path, max_scenarios: int | None = None, *,
                   max_field_chars: int | None = None) -> list[Scenario]:
    """All scenarios of a JSONL file, in file order, with ``index`` = position in that order.

    ``max_field_chars`` None = the ``data.max_field_chars`` default of the config schema.
    """
    if max_field_chars is None:
        from cdra_ray.config.schema import DataConfig

        max_field_chars = DataConfig.max_field_chars
    if isinstance(max_field_chars, bool) or not isinstance(max_field_chars, int) or max_field_chars < 1:
        raise ScenarioDataError(f"data.max_field_chars={max_field_chars!r}: must be a positive integer")
    file = resolve_data_path(str(path))
    scenarios: list[Scenario] = []
    seen_ids: dict[str, int] = {}
    for line_no, where, record in iter_jsonl_objects(file):
        uid = _uid(record, f"{file.stem}/{line_no}", where, max_field_chars)
        if uid in seen_ids:
            raise ScenarioDataError(f"{where}: duplicate id {uid!r} (first on line {seen_ids[uid]})")
        seen_ids[uid] = line_no
        scenarios.append(Scenario(uid=uid, preference=_field(record, "preference", where, max_field_chars),
                                  query=_field(record, "query", where, max_field_chars), index=len(scenarios)))
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
