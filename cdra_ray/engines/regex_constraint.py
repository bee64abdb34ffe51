"""Regex-constrained decoding for the transformers engine, with the semantics of vLLM's structured outputs.

vLLM (xgrammar) compiles the regex into an automaton over the tokenizer's vocabulary. The dependency-light
engine does something simpler and still correct: a token is allowed after the text generated so far iff
``text + token_text`` is still a viable prefix of a full match (the ``regex`` package's ``partial=True``), and
EOS is allowed iff ``text`` already fully matches. Token texts are decoded once per tokenizer; tokens are
grouped by their first character so one viability check per distinct first character discards most of the
vocabulary for restrictive patterns (``SCORE: -?(0\\.[0-9]|1\\.0)``). Each step costs one regex call per
surviving token, so this suits short constrained outputs; a pattern like ``[\\s\\S]*SCORE: ...`` keeps the
whole vocabulary viable and costs ~|V| calls per token (use the vLLM engine for long constrained outputs).

Limitation: a token is judged by ``tokenizer.decode([id])``; byte-level tokens holding part of a multi-byte
character decode to U+FFFD there, so patterns over non-ASCII text can reject valid continuations.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Iterable, Sequence

import regex


def token_texts(tokenizer) -> list[str]:
    """Text of every token id as decoded alone; special tokens map to "" (never allowed by a constraint)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    size = len(tokenizer)
    texts = []
    for token_id in range(size):
        texts.append("" if token_id in special else tokenizer.decode([token_id], skip_special_tokens=False))
    return texts


class RegexConstraint:
    """Which tokens keep a completion a viable prefix of ``pattern``; reusable across rows and calls."""

    def __init__(self, pattern: str, texts: Sequence[str], eos_ids: Iterable[int], cache_size: int = 4096):
        try:
            self.compiled = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"SamplingSettings.regex {pattern!r} is not a valid regular expression: {exc}") from exc
        self.pattern = pattern
        self.eos_ids = sorted(set(eos_ids))
        if not self.eos_ids:
            raise ValueError("RegexConstraint needs at least one EOS token id to end a matched completion")
        by_first: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for token_id, text in enumerate(texts):
            if text:
                by_first[text[0]].append((token_id, text))
        self._by_first = dict(by_first)
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_size = cache_size

    def is_viable(self, text: str) -> bool:
        """Could ``text`` still be extended into a full match?"""
        return self.compiled.fullmatch(text, partial=True) is not None

    def is_complete(self, text: str) -> bool:
        return self.compiled.fullmatch(text) is not None

    def allowed_ids(self, text: str) -> list[int]:
        """Token ids allowed after ``text`` (EOS ids included iff ``text`` is a full match)."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        allowed: list[int] = []
        fullmatch = self.compiled.fullmatch
        for first, group in self._by_first.items():
            if fullmatch(text + first, partial=True) is None:
                continue
            for token_id, token_text in group:
                if len(token_text) == 1 or fullmatch(text + token_text, partial=True) is not None:
                    allowed.append(token_id)
        if self.is_complete(text):
            allowed.extend(self.eos_ids)
        allowed.sort()
        self._cache[text] = allowed
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return allowed
