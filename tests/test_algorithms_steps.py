"""Step segmentation: accepted marker variants, preamble, no markers, max_steps, tiling property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdra_ray.algorithms.steps import find_step_markers, segment_steps, step_texts


@pytest.mark.parametrize(
    "marker",
    ["Step 3:", "Step 3 :", "step 3:", "STEP 3:", "step 3.", "Step 3)", "**Step 3:**", "**Step 3**:", "__Step 3:__",
     "*Step 3:*", "### Step 3:", "## **Step 3:**", "  Step 3:", "\tStep 3:", "Step 3：", "Step 3 - go", "Step N:",
     "### Step 3", "**Step 3**", "Step 12:"],
)
def test_accepted_marker_variants_open_a_step(marker):
    heading_only = marker.rstrip("*").endswith("3")  # "### Step 3" / "**Step 3**": nothing else on the line
    text = "Step 1: first\n" + marker + ("\nsecond" if heading_only else " second")
    # the second step starts at the beginning of the marker's line, right after "Step 1: first\n" (14 chars)
    assert segment_steps(text) == [(0, 14), (14, len(text))]


@pytest.mark.parametrize(
    "line",
    ["as in Step 3: no", "Step 3.5 is a number", "Steps 3: no", "footstep 3: no", "1. a list item", "Step three:",
     "Step 3 of the plan", "Step: 3", "Stepped 3: no", "Step 3-4 range"],
)
def test_non_markers_do_not_open_a_step(line):
    text = "Step 1: first\n" + line
    assert segment_steps(text) == [(0, len(text))]


def test_marker_mid_line_only_with_markers_anywhere():
    text = "Step 1: a. Step 2: b"
    assert segment_steps(text) == [(0, 20)]
    # "Step 1: a. " is 11 characters: the mid-line marker opens step 2 there (the paper code's behaviour)
    assert segment_steps(text, markers_anywhere=True) == [(0, 11), (11, 20)]


def test_preamble_joins_step_one_and_no_marker_is_one_step():
    text = "Let me think.\nStep 1: a\nStep 2: b"
    # "Let me think.\n" (14) + "Step 1: a\n" (10) = 24: step 1 covers the preamble and its own line
    assert segment_steps(text) == [(0, 24), (24, 33)]
    assert segment_steps("just an answer") == [(0, 14)]
    assert segment_steps("") == [(0, 0)]


def test_step_numbers_are_not_checked():
    text = "Step 1: a\nStep 1: b\nStep 7: c"
    assert step_texts(text) == ["Step 1: a\n", "Step 1: b\n", "Step 7: c"]
    assert [m.group("number") for m in find_step_markers(text)] == ["1", "1", "7"]


def test_max_steps_merges_the_tail_into_the_last_kept_step():
    text = "".join(f"Step {k}: s{k}\n" for k in range(1, 8))  # 7 lines of 11 characters ("Step 1: s1\n")
    assert len(segment_steps(text)) == 7
    # keep 5: steps 1-4 as they are, step 5 runs to the end (lines 5, 6, 7 = characters 44..77)
    assert segment_steps(text, max_steps=5) == [(0, 11), (11, 22), (22, 33), (33, 44), (44, 77)]
    assert segment_steps(text, max_steps=1) == [(0, 77)]
    assert segment_steps(text, max_steps=99) == segment_steps(text)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5"])
def test_max_steps_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="max_steps"):
        segment_steps("Step 1: a", max_steps=bad)


def test_text_must_be_str():
    with pytest.raises(ValueError, match="text"):
        segment_steps(b"Step 1: a")


def test_markdown_and_blank_lines():
    text = "## Plan\n\n**Step 1:** look\n\n### Step 2: think\n\nStep 3. answer"
    assert step_texts(text) == ["## Plan\n\n**Step 1:** look\n\n", "### Step 2: think\n\n", "Step 3. answer"]


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(st.sampled_from(list("Sstep 123N:.*#\n\t-é😀ab")), max_size=80),
       max_steps=st.one_of(st.none(), st.integers(1, 6)))
def test_spans_tile_the_text(text, max_steps):
    spans = segment_steps(text, max_steps)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(s < e for s, e in spans) or text == ""  # only the empty text has an empty step
    if max_steps is not None:
        assert len(spans) <= max_steps
    assert "".join(text[s:e] for s, e in spans) == text
    # every step after the first starts with a marker at its line start
    for s, _ in spans[1:]:
        assert s == 0 or text[s - 1] == "\n"
        assert find_step_markers(text[s:])[0].start() == 0
