"""GPU presets and wiring decisions that are pure: reward TP, optimizer offload, where the NCCL port is chosen."""

from __future__ import annotations

import pytest

from cdra_ray.config import ConfigError, load_config
from cdra_ray.learner.deepspeed_config import build_deepspeed_config


def test_reward_engine_gets_its_own_tensor_parallel_size():
    from cdra_ray.actors.constructors import reward_engine_spec, rollout_engine_spec

    config = load_config("paper_qwen7b_4gpu", ["rollout.tensor_parallel_size=2", "rollout.num_gpus=1",
                                               "reward.tensor_parallel_size=1", "reward.num_gpus=1"])
    assert reward_engine_spec(config, "/models/judge").options.tensor_parallel_size == 1
    assert rollout_engine_spec(config, "/models/policy").options.tensor_parallel_size == 2
    wide_judge = load_config("paper_qwen7b_4gpu", ["reward.tensor_parallel_size=4", "reward.num_gpus=4"])
    assert reward_engine_spec(wide_judge, "/models/judge").options.tensor_parallel_size == 4
    assert rollout_engine_spec(wide_judge, "/models/policy").options.tensor_parallel_size == 1


@pytest.mark.parametrize("overrides, message", [
    (["reward.tensor_parallel_size=2", "reward.num_gpus=1"], "reward.tensor_parallel_size=2 needs reward.num_gpus=2"),
    (["reward.tensor_parallel_size=0"], "reward.tensor_parallel_size=0"),
    (["learner.offload_optimizer=nvme"], "learner.offload_optimizer"),
    (["learner.zero_stage=0"], "needs learner.zero_stage >= 1"),
])
def test_gpu_placement_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("paper_qwen7b_4gpu", overrides)
    assert load_config("paper_qwen7b_4gpu", ["reward.tensor_parallel_size=2", "reward.num_gpus=2"])


def test_paper_preset_syncs_over_nccl_and_offloads_the_optimizer_of_each_learner_rank():
    from cdra_ray.actors.constructors import learner_settings

    config = load_config("paper_qwen7b_4gpu")
    assert config.rollout.weight_sync == "nccl" and config.learner.device == "cuda"
    settings = learner_settings(config, "/models/Qwen2.5-7B-Instruct")
    assert (settings.zero_stage, settings.dtype, settings.offload_optimizer) == (3, "bfloat16", "cpu")
    assert settings.dist_backend == "nccl" and settings.gradient_checkpointing


def test_deepspeed_config_of_the_paper_preset():
    """The dict the learner hands DeepSpeed for the preset's settings (ZeRO-3, bf16, optimizer in CPU RAM)."""
    cfg = build_deepspeed_config(zero_stage=3, micro_batch_size=5, precision="bf16", lr=1e-6,
                                 offload_optimizer="cpu", max_grad_norm=1.0)
    assert cfg["zero_optimization"] == {
        "stage": 3,
        "contiguous_gradients": True,
        "overlap_comm": False,
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": {"device": "cpu"},
    }
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    # DeepSpeed refuses torch's AdamW beside an offloaded optimizer unless this is false
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert cfg["train_batch_size"] == 5 and cfg["gradient_clipping"] == 1.0


@pytest.mark.deepspeed
def test_deepspeed_accepts_the_offload_config():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    zero = DeepSpeedZeroConfig(**build_deepspeed_config(zero_stage=3, micro_batch_size=1, precision="bf16",
                                                        offload_optimizer="cpu")["zero_optimization"])
    assert zero.stage == 3 and zero.offload_optimizer.device == "cpu" and zero.offload_optimizer.pin_memory


def test_the_driver_no_longer_picks_the_rendezvous_port(monkeypatch):
    """The learner actor chooses address and port on its own node; the driver sends neither."""
    from cdra_ray.actors import publishers

    sent = {}

    class Method:
        def remote(self, *args, **kwargs):
            sent["args"], sent["kwargs"] = args, kwargs
            return "ref"

    class LearnerHandle:
        connect_weight_sync = Method()

    monkeypatch.setattr(publishers.ray, "get", lambda ref, **kw: None)
    publishers.NcclPublisher(LearnerHandle(), ["w0", "w1"], tensor_parallel_size=2)
    assert sent["args"] == (["w0", "w1"], [2, 2]) and not sent["kwargs"]
