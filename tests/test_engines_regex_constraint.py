"""The vocabulary filter behind regex-constrained decoding in the transformers engine (pure, hand-made vocab)."""

import pytest
import torch

from cdra_ray.engines.hf_engine import top_p_filter
from cdra_ray.engines.regex_constraint import RegexConstraint

# id:        0     1     2        3    4    5    6    7    8    9    10    11
VOCAB = ["S", "SC", "SCORE", ":", " ", "-", "0", ".", "1", "5", "x", ": -"]
EOS = 99
PATTERN = r"SCORE: -?(0\.[0-9]|1\.0)"


@pytest.fixture
def constraint():
    return RegexConstraint(PATTERN, VOCAB, [EOS])


def test_start_allows_only_prefixes_of_score(constraint):
    assert constraint.allowed_ids("") == [0, 1, 2]  # "S", "SC", "SCORE"


def test_multi_character_token_must_fit_whole(constraint):
    # after "SCORE" only ":" and ": -" continue; " " would need the colon first
    assert constraint.allowed_ids("SCORE") == [3, 11]


def test_sign_or_digit_after_space(constraint):
    assert constraint.allowed_ids("SCORE: ") == [5, 6, 8]  # "-", "0", "1"


def test_eos_only_when_complete(constraint):
    assert constraint.allowed_ids("SCORE: 0.") == [6, 8, 9]  # a digit, no EOS yet
    assert constraint.allowed_ids("SCORE: 0.5") == [EOS]  # complete and not extendable
    assert constraint.allowed_ids("SCORE: 1.") == [6]  # only "1.0" is allowed


def test_dead_text_allows_nothing(constraint):
    assert constraint.allowed_ids("x") == []


def test_special_tokens_with_empty_text_are_never_allowed():
    c = RegexConstraint(r"[\s\S]*", ["", "a"], [EOS])
    assert c.allowed_ids("") == [1, EOS]  # "" (a special token) excluded; the empty text already matches


def test_invalid_pattern_names_the_field():
    with pytest.raises(ValueError, match="SamplingSettings.regex"):
        RegexConstraint("(", VOCAB, [EOS])


def test_top_p_keeps_smallest_prefix_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # mass ranked above each token: 0, 0.5, 0.8 -> with top_p 0.6 the third (0.8 >= 0.6) is dropped
    kept = torch.isfinite(top_p_filter(logits, 0.6))
    assert kept.tolist() == [[True, True, False]]
    # top_p 0.5: the first token alone reaches 0.5, so the second (0.5 >= 0.5) is dropped too
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_respects_unsorted_order():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[False, True, True]]
