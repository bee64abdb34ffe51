"""``dtype: auto`` (rollout.dtype, reward.dtype): bfloat16 where the hardware computes it natively, else float32."""

import pytest

from cdra_ray.config import ConfigError, load_config
from cdra_ray.engines.catalog import BF16_CPU_FLAGS, VLLMOptions, auto_dtype, host_dtype, resolve_dtype


def test_auto_dtype_follows_the_hardware():
    assert auto_dtype({"avx2", "avx512f", "avx512_bf16"}, None) == "bfloat16"
    assert auto_dtype(["amx_bf16", "amx_tile"], None) == "bfloat16"
    assert auto_dtype({"avx2", "avx512f"}, None) == "float32"  # AVX-512 without BF16: fp32 stays faster
    assert auto_dtype({"avx2"}, None, fallback="float16") == "float16"
    assert auto_dtype(set(), True) == "bfloat16" and auto_dtype({"amx_bf16"}, False) == "float32"  # CUDA decides


def test_host_dtype_reads_this_machines_flags():
    flags = set()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    expected = "bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"
    assert host_dtype() == expected


def test_resolve_dtype_replaces_only_auto(monkeypatch):
    assert resolve_dtype("auto") == host_dtype()
    monkeypatch.setattr("cdra_ray.engines.catalog.host_dtype", lambda fallback="float32": "bfloat16")
    assert resolve_dtype("auto") == "bfloat16"
    assert [resolve_dtype(d) for d in ("float32", "float16", "bfloat16")] == ["float32", "float16", "bfloat16"]


def test_auto_is_a_valid_engine_dtype_and_reaches_the_engines():
    from cdra_ray.actors.constructors import reward_engine_spec, rollout_engine_spec

    assert VLLMOptions(dtype="auto").dtype == "auto"
    config = load_config("cpu_demo", ["reward.dtype=null"])
    assert config.model.dtype == "auto" and config.rollout.dtype is None  # the preset: every role follows model
    assert rollout_engine_spec(config, "/m").options.dtype == "auto"
    assert reward_engine_spec(config, "/m").options.dtype == "auto"
    plain = load_config("cpu_demo", ["model.dtype=float32"])
    assert rollout_engine_spec(plain, "/m").options.dtype == "float32" == reward_engine_spec(plain, "/m").options.dtype
    judge_only = load_config("cpu_demo", ["model.dtype=float32", "reward.dtype=auto"])
    assert reward_engine_spec(judge_only, "/m").options.dtype == "auto"
    assert rollout_engine_spec(judge_only, "/m").options.dtype == "float32"


def test_model_dtype_auto_reaches_the_learner_and_the_reference_unresolved():
    """Resolved where each model loads (the actor's node), never on the driver."""
    from cdra_ray.actors.constructors import learner_settings, reference_options

    config = load_config("cpu_demo")
    assert learner_settings(config, "/m").dtype == "auto"
    assert reference_options(config)["dtype"] == "auto"


@pytest.mark.parametrize("key", ["model.dtype", "rollout.dtype", "reward.dtype"])
def test_a_bad_dtype_names_its_key(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("cpu_demo", [f"{key}=fp8"])
