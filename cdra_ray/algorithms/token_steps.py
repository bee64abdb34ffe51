"""Map each generated token to the step (character span) it belongs to, from character offsets.

Rule: a token belongs to the step whose span contains the token's first character, where a token's first
character is the first character of the decoded text that the token contributes to. Consequences:

- A token that straddles a step boundary (e.g. ``".\\nStep"`` as one token) belongs to the step where it starts.
- Byte-level BPE can split one multi-byte UTF-8 character over several tokens; each of those tokens "starts"
  at that character (decoding a prefix that ends inside the character yields U+FFFD, which is not counted as
  text yet), so they all land in the step containing the character.
- Tokens that decode to nothing (special tokens such as EOS with ``skip_special_tokens=True``) start where the
  next text would start; at the end of the response that is ``len(text)``, which maps to the last step.
- A response cut off at the length limit needs nothing special: its offsets are computed on whatever was
  generated (a trailing partial character decodes to U+FFFD and belongs to the last step).

Offsets come from incremental decoding: token k starts at the length of the common prefix of
``decode(token_ids[:k])`` and ``decode(token_ids)`` (a trailing U+FFFD of a partial character is not common).
Fast path: ``tokenizers``' ``DecodeStream`` (O(n), the streaming detokenizer engines use), accepted only when
its chunks join exactly to the full decode; only tokens right after a held-back partial character are refined
with a prefix decode. Otherwise (slow tokenizers, clean-up of tokenization spaces, decoders that cannot stream)
every prefix is decoded (O(n^2) characters; ~0.1 s for 1k tokens with a fast tokenizer). Both give the same
offsets (tested).

Departure from the paper's code (Deep-pref ``scripts/CDPA_trainer.py``): it re-tokenizes each stripped step
text and searches for that id sequence inside the completion ids; whenever a token straddles a step boundary
(or the step's first token merges differently in context, e.g. ``" Step"`` vs ``"Step"``), the search fails and
that step's tokens silently keep reward 0. The paper's text assumes the mapping exists without saying how.
"""

from __future__ import annotations

import bisect
import difflib
from typing import Sequence

__all__ = ["token_start_offsets", "map_tokens_to_steps", "token_steps_for_response", "align_offsets"]


def _decode(tokenizer, ids: list[int], skip_special_tokens: bool) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _backend(tokenizer):
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the tokenizer itself), else None."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is a hard dependency of transformers
        return None
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


def _common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _prefix_start(tokenizer, ids: list[int], k: int, full: str, skip_special_tokens: bool) -> int:
    """Where token k starts: how much of ``full`` the tokens before it have already produced.

    A prefix ending inside a multi-byte character decodes to U+FFFD there, which is not (yet) text of ``full``;
    a decoder that rewrites text (clean-up of tokenization spaces) only shortens the common prefix.
    """
    if k == 0:
        return 0
    return _common_prefix_length(_decode(tokenizer, ids[:k], skip_special_tokens), full)


def _stream_offsets(tokenizer, ids: list[int], full: str, skip_special_tokens: bool) -> list[int] | None:
    """Offsets from ``DecodeStream``; None when unavailable or when its text disagrees with ``full``.

    The stream holds back every token of a partial multi-byte character (``step`` returns None); the tokens
    right after such a hold-back get their exact start from a prefix decode, the rest need none.
    """
    backend = _backend(tokenizer)
    if backend is None:
        return None
    try:
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        starts, pieces, refine, length, pending = [], [], [], 0, False
        for k, token in enumerate(ids):
            starts.append(length)  # exact unless the stream is holding text back (then refined below)
            if pending:
                refine.append(k)
            chunk = stream.step(backend, token)
            pending = chunk is None
            if chunk:
                pieces.append(chunk)
                length += len(chunk)
    except Exception:  # a decoder that cannot stream: use the exact fallback
        return None
    joined = "".join(pieces)
    # A response cut inside a multi-byte character: the stream holds the partial bytes back while the full
    # decode renders them as U+FFFD; the held-back tokens' offsets are still right.
    if joined != full and not (pending and full.startswith(joined)):
        return None
    for k in refine:
        starts[k] = max(starts[k], _prefix_start(tokenizer, ids, k, full, skip_special_tokens))
    for k in range(1, len(starts)):  # never backwards
        starts[k] = max(starts[k], starts[k - 1])
    return starts


def _prefix_offsets(tokenizer, ids: list[int], full: str, skip_special_tokens: bool) -> list[int]:
    """Exact fallback: token k starts at the common-prefix length of decode(ids[:k]) and the full decode."""
    starts, best = [], 0
    for k in range(len(ids)):
        best = max(best, _prefix_start(tokenizer, ids, k, full, skip_special_tokens))  # never backwards
        starts.append(best)
    return starts


def token_start_offsets(
    tokenizer, token_ids: Sequence[int], *, skip_special_tokens: bool = True, method: str = "auto"
) -> list[int]:
    """Character offset in ``tokenizer.decode(token_ids, skip_special_tokens=...)`` where each token's text starts.

    Offsets are non-decreasing and lie in ``[0, len(text)]``. ``method``: ``"auto"`` (streaming when it agrees
    with the full decode, else prefixes), ``"stream"`` (error if streaming is unusable) or ``"prefix"``.
    The tokenizer needs ``decode(ids, skip_special_tokens=...)`` (transformers tokenizers and
    ``tokenizers.Tokenizer`` both qualify). Paper: its text never says how tokens map to steps; its code has no
    offsets at all (it searches re-tokenized step ids, see the module docstring).
    """
    if method not in ("auto", "stream", "prefix"):
        raise ValueError(f"method must be 'auto', 'stream' or 'prefix', got {method!r}")
    ids = [int(t) for t in token_ids]
    if any(t < 0 for t in ids):
        raise ValueError(f"token_ids must be non-negative ids, got {min(ids)}")
    if not ids:
        return []
    full = _decode(tokenizer, ids, skip_special_tokens)
    if method != "prefix":
        starts = _stream_offsets(tokenizer, ids, full, skip_special_tokens)
        if starts is not None:
            return starts
        if method == "stream":
            raise ValueError("method='stream': this tokenizer cannot stream-decode to the same text as decode()")
    return _prefix_offsets(tokenizer, ids, full, skip_special_tokens)


def _check_spans(spans: Sequence[tuple[int, int]], text_length: int | None = None) -> list[int]:
    """Validate that spans tile [0, end] contiguously; return their starts."""
    if len(spans) == 0:
        raise ValueError("spans must hold at least one (start, end) span")
    starts = []
    expected = 0
    for j, span in enumerate(spans):
        if len(span) != 2:
            raise ValueError(f"spans[{j}] must be a (start, end) pair, got {span!r}")
        start, end = int(span[0]), int(span[1])
        if start != expected or end < start:
            raise ValueError(
                f"spans must be contiguous from 0 with start <= end; spans[{j}] = {tuple(span)} "
                f"(expected start {expected})"
            )
        starts.append(start)
        expected = end
    if text_length is not None and expected != text_length:
        raise ValueError(f"spans cover {expected} characters but the text has {text_length}")
    return starts


def map_tokens_to_steps(starts: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Step index of each token: the last span that starts at or before the token's start offset.

    For offsets inside the text this is the span containing the offset; an offset at ``len(text)`` (EOS and
    other empty tokens at the end) maps to the last span. Empty spans (only the empty text has one) are skipped
    in favour of the span after them. Paper: its code gives a token the reward of the step whose re-tokenized
    ids it was found in, and 0 when not found; here every token gets exactly one step.
    """
    span_starts = _check_spans(spans)
    end = int(spans[-1][1])
    out = []
    previous = 0
    for k, offset in enumerate(starts):
        offset = int(offset)
        if offset < 0 or offset > end:
            raise ValueError(f"starts[{k}] = {offset} is outside the spanned text [0, {end}]")
        if offset < previous:
            raise ValueError(f"starts must be non-decreasing; starts[{k}] = {offset} < {previous}")
        previous = offset
        out.append(bisect.bisect_right(span_starts, offset) - 1)
    return out


def align_offsets(source: str, target: str, offsets: Sequence[int]) -> list[int]:
    """Carry character offsets in ``source`` over to ``target`` (a slightly different rendering of it).

    Offsets inside a run of characters both strings share map exactly; offsets inside a changed region map to
    the start of the next shared run in ``target`` (or ``len(target)``). Monotone by construction. Not in the
    paper (text or code): it only exists so spans computed on an engine's text can be used with our offsets.
    """
    if source == target:
        return [int(o) for o in offsets]
    blocks = difflib.SequenceMatcher(None, source, target, autojunk=False).get_matching_blocks()
    out, previous = [], 0
    for offset in offsets:
        mapped = len(target)
        for a, b, size in blocks:
            if offset < a:  # inside a changed region: next shared run
                mapped = b
                break
            if offset < a + size:
                mapped = b + (offset - a)
                break
        previous = max(previous, mapped)
        out.append(previous)
    return out


def token_steps_for_response(
    tokenizer,
    token_ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    *,
    text: str | None = None,
    skip_special_tokens: bool = True,
    method: str = "auto",
) -> list[int]:
    """Step index of every generated token, from decoded character offsets.

    ``spans`` are character spans (e.g. from :func:`~cdra_ray.algorithms.steps.segment_steps`) over ``text``
    when given (the engine's own response text), else over ``tokenizer.decode(token_ids)``. When the engine's
    text differs from that decode (another clean-up or special-token rendering), pass it as ``text``: offsets
    are then carried over with :func:`align_offsets`. Without ``text``, spans that do not cover exactly the
    decoded text are an error.

    Departure from the paper's code: no re-tokenization search, so a token straddling a boundary or a step whose
    ids merge differently in context still gets its step's reward (the code silently left those at 0). The
    paper's text assumes the mapping without specifying it.
    """
    ids = [int(t) for t in token_ids]
    starts = token_start_offsets(tokenizer, ids, skip_special_tokens=skip_special_tokens, method=method)
    decoded = _decode(tokenizer, ids, skip_special_tokens) if ids else ""
    if text is None:
        try:
            _check_spans(spans, len(decoded))
        except ValueError as err:
            raise ValueError(
                f"{err} (spans must be computed on tokenizer.decode(token_ids, skip_special_tokens="
                f"{skip_special_tokens}); pass the engine's response text as text= if the spans come from it)"
            ) from None
    else:
        _check_spans(spans, len(text))
        starts = align_offsets(decoded, text, starts)
    return map_tokens_to_steps(starts, spans)
