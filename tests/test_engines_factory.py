"""Choosing an engine by name."""

import subprocess
import sys

import pytest

from cdra_ray.engines import ENGINE_KINDS, GenerationEngine, create_engine
from cdra_ray.models.tiny import build_tiny_model


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown engine kind 'sglang'; valid kinds: vllm, hf, openai"):
        create_engine("sglang", "/nowhere")
    assert ENGINE_KINDS == ("vllm", "hf", "openai")


def test_hf_kind_builds_an_hf_engine(tmp_path):
    engine = create_engine("hf", build_tiny_model(tmp_path / "tiny"), max_batch_size=4)
    assert type(engine).__name__ == "HFEngine" and engine.max_batch_size == 4
    assert isinstance(engine, GenerationEngine)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        create_engine("hf", tmp_path / "tiny", max_batch_size=0)


def _imported_after(code: str) -> set[str]:
    """Heavy top-level packages a fresh interpreter has imported after running ``code``."""
    probe = code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split()) & {"torch", "vllm", "deepspeed", "ray", "transformers"}


def test_config_loads_and_checks_every_kind_without_torch_vllm_deepspeed_or_ray():
    assert _imported_after("from cdra_ray.config import load_config; load_config('cpu_demo')") == set()
    assert _imported_after("import cdra_ray.registry, cdra_ray.algorithms.catalog, cdra_ray.rewards.catalog, "
                           "cdra_ray.engines.catalog, cdra_ray.algorithms.steps, cdra_ray.algorithms.scores") == set()


def test_algorithms_and_the_hf_engine_import_without_vllm_deepspeed_or_ray(tmp_path):
    assert _imported_after("import cdra_ray.algorithms.advantages, cdra_ray.algorithms.policy_loss") == {"torch"}
    model = build_tiny_model(tmp_path / "tiny")
    heavy = _imported_after(f"from cdra_ray.engines import create_engine; create_engine('hf', {str(model)!r})")
    assert "vllm" not in heavy and "deepspeed" not in heavy and "ray" not in heavy


def test_missing_model_dir_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_engine("hf", "/definitely/not/a/model")
