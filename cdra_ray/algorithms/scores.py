"""Read scores out of a scoring model's own output: Pers-GenPRM step scores, holistic 0-100 scores, judge answers.

These parsers only ever see the scoring model's (reward model's or judge's) text, never the policy's response,
so a policy cannot write "SCORE: 1" into its answer and reward itself. Each returns ``None`` when nothing
well-formed is found, so the caller decides (retry greedily, then a configured default, counted) instead of a
silent number.

Well-formed numbers
-------------------
A plain decimal: optional sign (``+``, ``-`` or the Unicode minus ``−``), ASCII digits with an optional fraction,
or a bare fraction (``.8``). Sentence punctuation right after it is fine (``SCORE: 0.8.`` is 0.8). NOT well-formed,
and therefore skipped as if absent (an earlier well-formed score, if any, counts): more number after it
(``0.8.5``, ``1e9``, ``1E-3``, ``0x1``, ``0,8``), letters or digits of any script glued to it (``0.8abc``,
``0.8٣``), digits of other scripts (``٠.٨``, ``８``), a fraction (``8/10``), a percentage (``SCORE: 80%``: a
percentage is not a value on [-1, 1], and clamping 80 to 1.0 would reward a confused judge), a range
(``0.7 - 0.89``, ``[0-100]``), a template placeholder (``[your_score]``), ``nan``/``inf``. Scientific
notation is rejected on purpose: a judge that writes ``1e9`` on a [-1, 1] scale is malfunctioning, and
clamping that to 1.0 would reward it. Between ``SCORE:`` and the number: spaces, at most one line break,
markdown emphasis and one opening ``[`` or ``(``.

Departures from the paper's code (Deep-pref ``scripts/CDPA_trainer.py``): it takes the FIRST
``**SCORE:**\\s*([-+]?\\d*\\.?\\d+)`` match (bold form only, case-insensitive), does not clamp, and falls back to
0.0 silently. Here the LAST well-formed value counts (a judge that reconsiders writes its final verdict last;
pass ``which="first"`` for the paper's choice), bold is optional, values are clamped to the range, and "no
score" is ``None``. The paper's text (Eq. 1, Fig. 12/15) only says the critique is followed by "SCORE: x".
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_step_score", "parse_final_score", "parse_judge_answer"]

# Every pattern below runs in time linear in the text: each run of spaces is matched possessively (``*+``) and is
# followed by a non-space, so no run can be split between two quantifiers (chained optional ``[ \t]*`` made the
# old patterns polynomial: ~25 s for "SCORE:" + 300 spaces), and every digit run is possessive too.
_WS = r"[ \t]*+"
_NOT_RANGE = r"(?!" + _WS + r"[-\u2013]" + _WS + r"\.?[0-9])"  # "0.7 - 0.89" / "[0-100]" is a range, not a value
_DECIMAL = r"(?P<number>[-+\u2212]?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++))"
# A decimal that is not followed by more number-like text: "." may follow (end of sentence) unless a digit
# follows it; a letter or digit of any script, "_", "," + digit disqualify the match.
_NUMBER_END = r"(?![0-9.]*[0-9])(?!\w|,[0-9])"
# A step score: also "/" (a fraction) and "%" (a percentage is not a value on [-1, 1]) disqualify it.
_NUMBER = _DECIMAL + _NUMBER_END + r"(?!" + _WS + r"[/%])" + _NOT_RANGE
_EMPH = r"(?:(?:\*{1,2}|_{1,2})" + _WS + r")?"  # "**" / "__" and the spaces after it
# Between the delimiter and the number: spaces, at most one line break, "**", one "[" or "(".
_OPEN = _WS + r"(?:\r?\n" + _WS + r")?" + _EMPH + r"(?:[\[(]" + _WS + r")?" + _EMPH

# "SCORE" as a word (also JSON "score"; "FINAL SCORE" is filtered out afterwards), then ":" or "="
# (emphasis may wrap either side).
_STEP_SCORE = re.compile(r"(?<![A-Za-z])[\"']?score[\"']?" + _WS + _EMPH + r"[:=]" + _OPEN + _NUMBER, re.IGNORECASE)
# "FINAL SCORE" then ":" or "=", number, then one of: "/100" ("/ 100", "out of 100", a well-formed denominator),
# "%" (the 0-100 scale is a percentage), or nothing of the kind ("85/1e3" and "85 out of ten" are malformed).
_OUT_OF = r"(?:/|out[ \t]++of(?![A-Za-z]))"
_FINAL_SCORE = re.compile(
    r"(?<![A-Za-z])final[ \t_]*+score" + _WS + _EMPH + r"[:=]" + _OPEN + _DECIMAL + _NUMBER_END + _NOT_RANGE
    + r"(?:(?P<outof>" + _WS + _OUT_OF + _WS + r"(?P<denominator>[0-9]++(?:\.[0-9]++)?)" + _NUMBER_END
    + r"(?!" + _WS + r"[/%]))"
    + r"|" + _WS + r"%(?!" + _WS + r"(?:" + _OUT_OF + r"|%))"
    + r"|(?!" + _WS + r"(?:" + _OUT_OF + r"|%)))",
    re.IGNORECASE,
)
# <answer>Yes</answer>; tolerates [Yes], "Yes.", and a missing closing tag at the very end (stop strings).
_ANSWER = re.compile(
    r"<answer>\s*+\[?\s*+(?P<word>yes|no)\s*+\]?\s*+[.!]?\s*+(?:</answer>|$)", re.IGNORECASE
)
_FINAL_GAP = frozenset(" \t_*\"'")  # what may stand between "FINAL" and "SCORE" on one line


def _after_final(text: str, start: int) -> bool:
    """Whether ``text[:start]`` ends with "final" plus spaces/emphasis/quotes on the same line (then the score is a
    FINAL SCORE); a line break in between makes them separate lines, as ``_FINAL_SCORE`` reads them.

    A backward scan over the gap only: linear overall, where a regex search of the whole prefix per match is not.
    """
    j = start
    while j > 0 and text[j - 1] in _FINAL_GAP:
        j -= 1
    return text[max(j - 5, 0):j].lower() == "final"


def _check_range(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"low/high must be finite with low < high, got low={low}, high={high}")


def _to_float(raw: str) -> float:
    return float(raw.replace("\u2212", "-"))


def _pick(matches: list[re.Match], which: str) -> re.Match | None:
    if which not in ("last", "first"):
        raise ValueError(f"which must be 'last' or 'first', got {which!r}")
    if not matches:
        return None
    return matches[-1] if which == "last" else matches[0]


def parse_step_score(text: str, low: float = -1.0, high: float = 1.0, *, which: str = "last") -> float | None:
    """The last well-formed ``SCORE: x`` in a reward model's output, clamped to ``[low, high]``; None if none.

    Accepted: ``SCORE: 0.8``, ``**SCORE:** 0.8``, ``**SCORE**: 0.8``, ``SCORE: [0.8]``, ``SCORE: (0.8)``,
    ``SCORE: **0.8**``, ``Score: .8``, ``score = -0.35``, ``"score": 0.78`` (JSON, as in the paper's Fig. 16).
    ``FINAL SCORE`` lines are not step scores and are ignored. Paper departures: see the module docstring.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    _check_range(low, high)
    matches = [m for m in _STEP_SCORE.finditer(text) if not _after_final(text, m.start())]
    match = _pick(matches, which)
    if match is None:
        return None
    return min(max(_to_float(match.group("number")), low), high)


def parse_final_score(text: str, low: float = 0.0, high: float = 100.0, *, which: str = "last") -> float | None:
    """The last well-formed ``FINAL SCORE: x`` (0-100 holistic score, paper Fig. 13), clamped; None if none.

    Accepted: ``FINAL SCORE: 85``, ``**FINAL SCORE:** 85``, ``Final Score: [85]``, ``FINAL SCORE: 85/100``,
    ``FINAL SCORE: 85 out of 100``, ``FINAL SCORE: 85%`` (the 0-100 scale is a percentage). A denominator other
    than 100 (``8.5/10``) is rescaled to 0-100; a zero or malformed denominator (``85/1e3``, ``85 out of ten``)
    makes the match malformed (skipped), never clamped to a maximum. The paper's code has no such parser
    (construction code not released).
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    _check_range(low, high)
    good = []
    for match in _FINAL_SCORE.finditer(text):
        value = _to_float(match.group("number"))
        if match.group("denominator") is not None:
            denominator = float(match.group("denominator"))
            if denominator == 0:
                continue
            value = value * 100.0 / denominator
        good.append((match, value))
    if which not in ("last", "first"):
        raise ValueError(f"which must be 'last' or 'first', got {which!r}")
    if not good:
        return None
    value = good[-1][1] if which == "last" else good[0][1]
    return min(max(value, low), high)


def parse_judge_answer(text: str, *, which: str = "last") -> bool | None:
    """A judge's ``<answer>Yes</answer>`` / ``<answer>No</answer>`` (paper App. B) as True/False; None if absent.

    Case and whitespace do not matter; ``<answer>[Yes]</answer>`` and ``<answer>Yes.</answer>`` count; a missing
    ``</answer>`` counts only at the very end of the text (engines drop a stop string such as ``</answer>``).
    Anything else inside the tag (``Yes/No``, ``Maybe``) is not an answer. The last answer counts
    (``which="first"`` for the paper's choice). The paper's evaluation code
    (``eval/generation_task/llm_based_evaluation_errortypes.py``) takes the text of the FIRST ``<answer>`` tag
    (BeautifulSoup), stripped, and compares strings later, so "yes" vs "Yes" or "Yes." are its caller's problem.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    match = _pick(list(_ANSWER.finditer(text)), which)
    if match is None:
        return None
    return match.group("word").lower() == "yes"
