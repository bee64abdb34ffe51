"""Choosing an engine by name."""

import sys

import pytest

from cdra_ray.engines import ENGINE_KINDS, GenerationEngine, create_engine
from cdra_ray.models.tiny import build_tiny_model


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown engine kind 'sglang'; valid kinds: vllm, hf, openai"):
        create_engine("sglang", "/nowhere")
    assert ENGINE_KINDS == ("vllm", "hf", "openai")


def test_hf_kind_builds_an_hf_engine_without_importing_vllm(tmp_path):
    already_imported = "vllm" in sys.modules
    engine = create_engine("hf", build_tiny_model(tmp_path / "tiny"), max_batch_size=4)
    assert type(engine).__name__ == "HFEngine" and engine.max_batch_size == 4
    assert isinstance(engine, GenerationEngine)
    if not already_imported:
        assert "vllm" not in sys.modules


def test_missing_model_dir_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_engine("hf", "/definitely/not/a/model")
