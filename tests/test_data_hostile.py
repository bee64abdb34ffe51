"""`cdra-ray check-data` on hostile files: exit code 2 and a message naming the file and line; never a traceback,
never a silent pass. One case per hostile input (the good line 1 makes sure the bad line 2 is the one named)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from cdra_ray.cli import main

GOOD = json.dumps({"id": "ok", "preference": "I avoid caffeine.", "query": "Suggest a drink."}).encode()


def _line(**record) -> bytes:
    return json.dumps(record).encode()


def _record(preference="I like tea.", query="What to drink?", **extra) -> bytes:
    return _line(preference=preference, query=query, **extra)


HOSTILE_LINES = {
    "nested_1000_deep": b'{"preference": "p", "query": "q", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "nested_100000_deep": b"[" * 100_000 + b"]" * 100_000,
    "integer_over_4300_digits": b'{"preference": "p", "query": "q", "n": ' + b"9" * 5000 + b"}",
    "integer_id_over_4300_digits": b'{"id": ' + b"1" * 4301 + b', "preference": "p", "query": "q"}',
    "lone_surrogate_escape": b'{"preference": "a \\ud800 b", "query": "q"}',
    "lone_low_surrogate_in_query": b'{"preference": "p", "query": "\\udc00"}',
    "preference_2_mb": _record(preference="x" * 2_000_000),
    "preference_50_mb": _record(preference="y" * 50_000_000),
    "query_over_limit": _record(query="z" * 20_001),
    "preference_only_nul": _record(preference="\x00\x00\x00"),
    "nul_inside_preference": _record(preference="I like\x00 tea"),
    "preference_only_zero_width": _record(preference="\u200b\u200c\u200d\ufeff"),
    "preference_zero_width_and_spaces": _record(preference=" \u200b \u2060 "),
    "preference_only_control_chars": _record(preference="\x07\x1b"),
    "id_nan": b'{"id": NaN, "preference": "p", "query": "q"}',
    "id_infinity": b'{"id": Infinity, "preference": "p", "query": "q"}',
    "id_negative_infinity": b'{"id": -Infinity, "preference": "p", "query": "q"}',
    "nan_in_an_ignored_key": b'{"preference": "p", "query": "q", "weight": NaN}',
    "id_empty": _record(id=""),
    "id_blank": _record(id="   "),
    "id_float": _record(id=1.5),
    "id_bool": _record(id=True),
    "id_null": _record(id=None),
    "id_list": _record(id=[1]),
    "preference_and_user_profile_disagree": _record(user_profile="I love coffee."),
    "query_and_initial_question_disagree": _record(initial_question="What to eat?"),
    "duplicate_key_in_object": b'{"preference": "I like tea.", "preference": "I hate tea.", "query": "q"}',
    "preference_null": _line(preference=None, query="q"),
    "preference_list": _line(preference=["a"], query="q"),
    "top_level_string": b'"just a string"',
    "top_level_number": b"3",
    "truncated_json": b'{"preference": "p", "query": ',
    "trailing_garbage": b'{"preference": "p", "query": "q"} x',
    "raw_nul_byte": b'{"preference": "p\x00", "query": "q"}',
    "invalid_utf8": b'{"preference": "caf\xe9", "query": "q"}',
    "missing_query": _line(preference="p"),
    "duplicate_id": GOOD,
}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["check-data", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_hostile_line_is_an_error_naming_file_and_line(tmp_path, capsys, name):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD + b"\n" + HOSTILE_LINES[name] + b"\n")
    code, out, err = _run(capsys, path)  # an exception escaping main() fails the test with its traceback
    assert code == 2, f"accepted silently: {out!r}"
    assert f"{path}:2:" in err, err[:300]
    assert len(err) < 1000  # the message names the problem; it does not echo a 50 MB line


def test_limit_is_configurable(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD + b"\n" + _record(preference="x" * 300) + b"\n")
    code, _, err = _run(capsys, path, "--max-field-chars", 200)
    assert code == 2 and f"{path}:2:" in err and "data.max_field_chars=200" in err
    assert _run(capsys, path, "--max-field-chars", 300)[0] == 0
    assert _run(capsys, path, "--max-field-chars", 0)[0] == 2


def test_benign_variants_still_load(tmp_path, capsys):
    """What stays accepted: a byte-order mark, CRLF, agreeing duplicate names, integer ids, emoji with ZWJ."""
    lines = [
        b"\xef\xbb\xbf" + _record(id=7) + b"\r",
        _record(preference="I like tea.", user_profile="I like tea.", id="two"),
        _record(preference="Family \U0001F468\u200d\U0001F469\u200d\U0001F467 trips only.", id="three"),
        _record(preference="Tabs\tand\nnewlines are fine.", id="four"),
    ]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = _run(capsys, path)
    assert code == 0, err
    assert "4 valid scenarios" in out


def test_directory_is_named_as_such(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path)
    assert code == 2 and str(tmp_path) in err and "is a directory" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_named_as_such(tmp_path, capsys):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    code, _, err = _run(capsys, fifo)  # must not open (and block on) the pipe
    assert code == 2 and str(fifo) in err and "named pipe" in err


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_device_is_named_as_such(capsys):
    code, _, err = _run(capsys, "/dev/null")
    assert code == 2 and "/dev/null" in err and "a device" in err


@pytest.mark.skipif(sys.platform == "win32", reason="unix sockets")
def test_socket_is_named_as_such(tmp_path, capsys):
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        code, _, err = _run(capsys, path)
    finally:
        sock.close()
    assert code == 2 and str(path) in err and "a socket" in err


def test_missing_and_unreadable_paths(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "nope.jsonl")
    assert code == 2 and "file not found" in err
    code, _, err = _run(capsys, "a\x00b.jsonl")
    assert code == 2 and "not a usable path" in err
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    code, _, err = _run(capsys, loop)
    assert code == 2 and str(loop) in err and "cannot access" in err
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.jsonl"
        locked.write_bytes(GOOD + b"\n")
        locked.chmod(0)
        code, _, err = _run(capsys, locked)
        assert code == 2 and "cannot read" in err


def test_empty_file_and_blank_lines(tmp_path, capsys):
    for content in (b"", b"\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        code, _, err = _run(capsys, path)
        assert code == 2 and str(path) in err and "no scenarios" in err
