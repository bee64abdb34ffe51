"""Cut a policy response into reasoning steps (character spans), the unit Pers-GenPRM scores.

The policy answers in the paper's inference format (Fig. 14): ``Step 1: ...``, ``Step 2: ...``, and the last
step is the final answer. :func:`segment_steps` returns contiguous ``(start, end)`` character spans that cover
the whole text, so every character (and later every token) belongs to exactly one step.

Accepted step markers
---------------------
A marker counts only at the start of the text or at the start of a line (after optional spaces/tabs), so a
sentence that mentions "as in step 2: ..." mid-line never opens a step. At that position we accept::

    Step 3:        step 3:        STEP 3:        Step 3 :       Step 3.        Step 3)
    **Step 3:**    **Step 3**:    __Step 3:__    *Step 3:*      ### Step 3:    ## **Step 3:**
    Step 3 - ...   Step 3：(full-width colon)    Step N:  (the literal "N" the prompt template uses for the last step)
    ### Step 3     **Step 3**     (a heading / bold marker with nothing else on its line)

i.e. optional indentation, an optional markdown heading (``#`` x1-6), an optional ``*``/``_`` emphasis,
the word "step" in any case, a number of 1-3 digits (or ``N``), then ``:`` ``：`` ``.`` or ``)`` (``.`` only
when not followed by a digit, so "Step 3.5 ..." is not a marker), a dash between spaces ("Step 3 - ...") or the
end of the line. Step numbers are
NOT checked for order: every marker opens a new step (a model that writes "Step 1, Step 2, Step 2" gets three
steps). Numbered lists ("1.", "2)") and bare "First," / "Finally," are not markers.

A step's span starts at the beginning of its marker's line (indentation and ``#`` included) and ends where the
next step's span starts, so the newline(s) before a marker belong to the previous step. Text before the first
marker joins step 1; a text without markers is one step; the empty text is one empty step ``[(0, 0)]``.

Departures from the paper's code (Zephyrian-Hugh/Deep-pref ``scripts/CDPA_trainer.py``)
-------------------------------------------------------------------------------------------
The paper's code splits on the case-sensitive regex ``Step (\\d+):`` anywhere in the text, keeps the first run
of consecutive numbers 1..5 (restarting at a new "Step 1"), strips each step, drops the text before the first
marker and everything after the 5th step (those tokens get reward 0). Here: markers anywhere are available with
``markers_anywhere=True``; the 5-step cap is ``max_steps=5``, but the tail is merged into the last kept step
instead of dropped (dropping it would leave tokens without a step, and the paper's text gives every token a
step reward); the preamble joins step 1 (paper's text: every token t has ``r_{i,t} = r_i^{step}``); no
stripping (spans must tile the text for the token mapping). The paper's text does not define markers at all.
"""

from __future__ import annotations

import re

__all__ = ["STEP_MARKER", "find_step_markers", "segment_steps", "step_texts"]

# Group "number" holds the step number (digits or "N"); the match starts at the marker's line start.
# Every run of spaces is possessive (``*+``) and followed by a non-space, so a run cannot be split between two
# quantifiers: matching is linear in the text (the greedy form took ~9 s on "Step 1" + 20,000 spaces).
_MARKER_BODY = r"""
    (?:\#{1,6}[ \t]*+)?                # markdown heading
    (?:[*_]{1,2}[ \t]*+)?              # opening emphasis: ** __ * _
    (?<![A-Za-z0-9])[Ss][Tt][Ee][Pp][ \t]*+  # the word, any case, not inside a word (footstep 3)
    (?P<number>\d{1,3}|N)(?!\d)        # the number (or the template's literal N)
    (?:[ \t]*+[*_]{1,2})?              # closing emphasis before the delimiter: **Step 3**:
    (?:
        [ \t]*+(?:[:：)]|\.(?!\d))     # delimiter; "." only when no digit follows (Step 3.5 is not a marker)
      | [ \t]++[-–—](?=[ \t])          # or a spaced dash: "Step 3 - ..."
      | [ \t]*+[*_]{0,2}[ \t]*+(?=\r?\n|$)  # or nothing else on the line (### Step 3 / **Step 3**)
    )
"""
STEP_MARKER = re.compile(r"(?:^|(?<=\n))[ \t]*+" + _MARKER_BODY, re.VERBOSE)
_MARKER_ANYWHERE = re.compile(r"(?:(?:^|(?<=\n))[ \t]*+)?" + _MARKER_BODY, re.VERBOSE)


def find_step_markers(text: str, *, markers_anywhere: bool = False) -> list[re.Match]:
    """All step markers in ``text``, in order (see the module docstring for what counts).

    The paper's code matches ``Step (\\d+):`` anywhere, case-sensitively (``markers_anywhere=True`` is the closest
    switch; we stay case-insensitive and accept the markdown forms); the paper's text defines no markers.
    """
    pattern = _MARKER_ANYWHERE if markers_anywhere else STEP_MARKER
    return list(pattern.finditer(text))


def segment_steps(
    text: str, max_steps: int | None = None, *, markers_anywhere: bool = False
) -> list[tuple[int, int]]:
    """Contiguous character spans of the steps of ``text``: the first starts at 0, the last ends at ``len(text)``.

    ``max_steps`` keeps the first ``max_steps`` steps and merges everything after into the last kept one (the
    paper's code keeps 5 but drops the tail). ``markers_anywhere=True`` also accepts markers in mid-line, like the
    paper's code does. Departures: the paper's code drops the preamble and the tail after step 5 (their tokens
    get reward 0), requires consecutive numbers 1..5 and strips each step; here spans always tile the text, so
    every character belongs to a step (the paper's text gives every token its step's reward).
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
    starts = [m.start() for m in find_step_markers(text, markers_anywhere=markers_anywhere)]
    # The first step always starts at 0 (a preamble joins step 1); later markers open new steps.
    boundaries = [0] + starts[1:]
    if max_steps is not None:
        boundaries = boundaries[:max_steps]
    ends = boundaries[1:] + [len(text)]
    return list(zip(boundaries, ends))


def step_texts(text: str, max_steps: int | None = None, *, markers_anywhere: bool = False) -> list[str]:
    """The text of each step (``text[start:end]`` for each span), unstripped; joins back to ``text``.

    The paper's code strips each step before sending it to the reward model; strip at that call site if wanted.
    """
    return [text[s:e] for s, e in segment_steps(text, max_steps, markers_anywhere=markers_anywhere)]
