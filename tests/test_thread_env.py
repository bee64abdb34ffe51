"""Thread counts from the CPUs Ray grants an actor, and the oversubscription check of the presets (no Ray)."""

from pathlib import Path

import pytest

from cdra_ray.actors.environment import (
    actor_env,
    apply_granted_threads,
    concurrent_threads,
    format_cpu_list,
    granted_threads,
    oversubscription,
    thread_env,
)
from cdra_ray.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_threads_follow_the_grant_capped_by_the_cores():
    assert granted_threads({"CPU": 2.0}, cores=2, fallback=1) == 2
    assert granted_threads({"CPU": 1.0, "memory": 1e9}, cores=2, fallback=2) == 1  # the grant wins over config
    assert granted_threads({"CPU": 0.5}, cores=2, fallback=2) == 1  # a fraction of a core: one thread
    assert granted_threads({"CPU": 8.0}, cores=2, fallback=8) == 2  # never more threads than usable cores
    assert granted_threads({}, cores=4, fallback=3) == 3  # no CPU grant (num_cpus=0, outside Ray): the config
    assert granted_threads({"CPU": 3.0}, cores=0, fallback=1) == 1


def test_cpu_lists_and_binding():
    assert format_cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_cpu_list([3]) == "3"
    # the actor may run on exactly its granted cores: bind to them
    assert thread_env(2, [0, 1]) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    # one granted core out of two usable: Ray named no core, so no binding (vLLM's "auto" would take both)
    assert thread_env(1, [0, 1])["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert thread_env(1, [0, 1])["OMP_NUM_THREADS"] == "1"
    env = actor_env(0.5, "vllm", 1.0)
    assert env["OMP_NUM_THREADS"] == "1" and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_apply_granted_threads_outside_ray_uses_the_config(monkeypatch):
    import os

    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    try:
        threads = apply_granted_threads(1.0, "test")
        assert threads == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["VLLM_CPU_OMP_THREADS_BIND"] in ("nobind", "0")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith(
    ("construct", "serve", "sft", "recipe_paper"))))
def test_no_cpu_preset_oversubscribes_two_cores(name):
    config = load_config(name)
    if config.learner.device != "cpu":
        pytest.skip("GPU preset: sized for its nodes' cores")
    assert oversubscription(config, cores=2) is None, oversubscription(config, cores=2)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "ablations").glob("*.yaml")))
def test_no_ablation_preset_oversubscribes_two_cores(name):
    config = load_config(f"ablations/{name}")
    assert oversubscription(config, cores=2) is None


def test_overlapping_stages_name_the_keys():
    sync = load_config("cpu_demo")  # one group at a time: one busy actor, so 2 threads each is right
    assert concurrent_threads(sync) == [("rollout.num_cpus", 2)]
    asynchronous = load_config("cpu_demo", ["train.max_staleness=1"])
    busy = concurrent_threads(asynchronous)
    assert [k for k, _ in busy] == ["rollout.num_cpus", "reward.num_cpus", "learner.num_cpus", "learner.num_cpus"]
    message = oversubscription(asynchronous, cores=2)
    assert "8 threads" in message and "reward.num_cpus" in message and "train.max_staleness=1" in message
    batched = load_config("cpu_demo", ["train.groups_per_update=2", "rollout.num_workers=2"])
    # synchronous with 2 groups in flight: 2 rollout workers x 2 + reward 2 + reference 2, the learner waits
    assert sum(n for _, n in concurrent_threads(batched)) == 8
    assert "rollout.num_workers" in oversubscription(batched, cores=2)
    fits = load_config("cpu_demo", ["train.groups_per_update=2", "rollout.num_cpus=1", "reward.num_cpus=1",
                                    "learner.num_cpus=1"])
    assert oversubscription(fits, cores=3) is None and oversubscription(fits, cores=2) is not None
