"""Parsers of model output on hostile text: every call returns within a bound, on random and adversarial input.

A hang detector, not a speed test: each call runs in a worker process and must answer within ``BOUND_S``
(generous; a linear parser takes milliseconds on 100 KB, the old patterns took minutes or hours). A call over the
bound kills the worker and fails naming the parser and the shape of the input.
"""

from __future__ import annotations

import multiprocessing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BOUND_S = 2.0
MAX_CHARS = 100_000


def _call(name: str, text: str):
    from cdra_ray.algorithms import scores, steps

    parsers = {
        "parse_step_score": scores.parse_step_score,
        "parse_final_score": scores.parse_final_score,
        "parse_judge_answer": scores.parse_judge_answer,
        "segment_steps": steps.segment_steps,
        "segment_steps_anywhere": lambda t: steps.segment_steps(t, markers_anywhere=True),
    }
    return parsers[name](text)


PARSERS = ("parse_step_score", "parse_final_score", "parse_judge_answer", "segment_steps", "segment_steps_anywhere")


def _serve(conn) -> None:
    while True:
        name, text = conn.recv()
        conn.send(_call(name, text))


class _Worker:
    """One process that runs parser calls; killed and replaced when a call overruns the bound."""

    def __init__(self) -> None:
        self.process = None
        self.conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        self.conn.send(("parse_step_score", "SCORE: 0.5"))  # warm up: imports are not part of the bound
        assert self.conn.recv() == 0.5

    def run(self, name: str, text: str):
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((name, text))
        if not self.conn.poll(BOUND_S):
            self.process.kill()
            self.process.join()
            self.process = None
            shape = repr(text[:60]) + (f"... ({len(text)} characters)" if len(text) > 60 else "")
            pytest.fail(f"{name} did not return within {BOUND_S} s on {shape}")
        return self.conn.recv()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()


@pytest.fixture(scope="module")
def worker():
    w = _Worker()
    yield w
    w.stop()


def _check_result(name: str, text: str, result) -> None:
    """Whatever the input, the result has the documented type and range."""
    if name == "parse_step_score":
        assert result is None or -1.0 <= result <= 1.0
    elif name == "parse_final_score":
        assert result is None or 0.0 <= result <= 100.0
    elif name == "parse_judge_answer":
        assert result in (None, True, False)
    else:
        assert result[0][0] == 0 and result[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(result, result[1:]))


def _fill(head: str, unit: str, tail: str = "x") -> str:
    """``head`` + ``unit`` repeated up to ~100 KB + ``tail``."""
    return head + unit * ((MAX_CHARS - len(head) - len(tail)) // max(len(unit), 1)) + tail


MARKERS = ["SCORE:", "**SCORE:**", "score =", '"score":', "FINAL SCORE:", "FINAL SCORE: 85", "FINAL SCORE: 85/",
           "SCORE: 0.", "SCORE: 1", "<answer>", "<answer>yes", "<answer>[", "Step 1", "**Step 1", "### Step 1",
           "\nStep 1", "final", "Step"]
RUNS = [" ", "\t", " \t", "\n", " \n", "*", "_", "**", "[", "(", " *", "0", "1.", ".", "-", " - ", ",0", "%", "/",
        "\u00a0", "\u0663", "\uff18"]


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize("run", RUNS)
def test_long_runs_after_markers(worker, marker, run):
    text = _fill(marker, run)
    for name in PARSERS:
        _check_result(name, text, worker.run(name, text))


@pytest.mark.parametrize(
    "text",
    [
        _fill("", "SCORE: "),  # repeated markers, never a number
        _fill("", "SCORE: 0.8 "),  # repeated markers, each well-formed
        _fill("", "final score: 1 "),
        _fill("", "FINAL SCORE: 8/"),
        _fill("", "<answer>"),
        _fill("", "<answer><answer>yes"),
        "<answer>" * 6000 + "yes" + "</answer>" * 6000,  # nested tags
        _fill("", "\nStep 1:"),
        _fill("", "Step 1 Step 2 "),
        _fill("", "**Step **"),
        _fill("", "### "),
        _fill("", "final " + " " * 20),
        _fill("SCORE: ", "\u0660.\u0668 "),  # unicode digits
        _fill("SCORE: 0.", "\u0661"),
        _fill("SCORE: ", "0.5.", ""),
        _fill("FINAL SCORE: 85 out of ", "1", "e3"),
        _fill("", "SCORE: [0-100] "),
        _fill("", "\u2212"),
        _fill("", "😀"),
    ],
    ids=lambda t: repr(t[:24]),
)
def test_repeated_and_nested_families(worker, text):
    for name in PARSERS:
        _check_result(name, text, worker.run(name, text))


_ATOMS = st.sampled_from(MARKERS + RUNS + ["0.8", "-0.3", "out of", "100", "yes", "no", "</answer>", "x", "é",
                                           "\r\n", "]", ")", "N:", ":", "："])
_PIECES = st.one_of(
    st.tuples(_ATOMS, st.integers(1, 5000)).map(lambda p: p[0] * p[1]),  # a long run of one atom
    st.text(max_size=200),  # arbitrary unicode
)
_HOSTILE_TEXT = st.lists(_PIECES, max_size=40).map(lambda parts: "".join(parts)[:MAX_CHARS])


@settings(max_examples=150, deadline=None, database=None)
@given(text=_HOSTILE_TEXT, name=st.sampled_from(PARSERS))
def test_random_hostile_text_returns_in_bound(worker, text, name):
    _check_result(name, text, worker.run(name, text))
