"""The GPU weight-sync pieces of the rollout engine that run without a GPU: engine args, plans, adapters."""

import importlib.util
import pytest
import torch

from cdra_ray.engines.vllm_gpu import (
    WORKER_EXTENSION,
    CdraWorkerExtension,
    LLMWeightSyncClient,
    build_vllm_engine_args,
    vllm_skips_name,
)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


def test_engine_args_defaults_single_gpu():
    args = build_vllm_engine_args("/models/policy")
    assert args["distributed_executor_backend"] == "uni"
    assert args["worker_extension_cls"] == WORKER_EXTENSION
    assert args["weight_transfer_config"] == {"backend": "nccl"}
    assert (args["model"], args["tensor_parallel_size"], args["dtype"]) == ("/models/policy", 1, "bfloat16")


def test_engine_args_tensor_parallel_uses_ray_and_extra_wins():
    args = build_vllm_engine_args("/m", tensor_parallel_size=4, extra={"max_num_seqs": 64, "dtype": "float16"})
    assert args["distributed_executor_backend"] == "ray"
    assert (args["max_num_seqs"], args["dtype"]) == (64, "float16")
    plain = build_vllm_engine_args("/m", weight_transfer_backend=None, worker_extension=False)
    assert "weight_transfer_config" not in plain and "worker_extension_cls" not in plain


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"weight_transfer_backend": "gloo"}, "weight_transfer_backend 'gloo'"),
        ({"distributed_executor_backend": "slurm"}, "distributed_executor_backend 'slurm'"),
        ({"distributed_executor_backend": "uni", "tensor_parallel_size": 2}, "TP x PP = 2"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_engine_args_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_vllm_engine_args("/m", **kwargs)


@needs_vllm
@pytest.mark.vllm
def test_engine_args_are_accepted_by_vllm_engine_args(tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from cdra_ray.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")  # EngineArgs resolves the model path
    engine_args = EngineArgs(**build_vllm_engine_args(str(model_dir), tensor_parallel_size=2))
    assert engine_args.worker_extension_cls == WORKER_EXTENSION
    assert engine_args.weight_transfer_config.backend == "nccl"


@needs_vllm
@pytest.mark.vllm
def test_worker_extension_does_not_shadow_worker_attributes():
    # vLLM refuses an extension whose attribute names collide with the worker's
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    ours = [name for name in dir(CdraWorkerExtension) if not name.startswith("__")]
    assert ours == ["cdra_runner_info", "cdra_weight_checksum", "cdra_weight_fingerprint"]
    assert not any(hasattr(Worker, name) or hasattr(CPUWorker, name) for name in ours)


def test_skipped_names():
    assert vllm_skips_name("lm_head.weight", tie_word_embeddings=True)
    assert not vllm_skips_name("lm_head.weight", tie_word_embeddings=False)
    assert vllm_skips_name("model.layers.0.self_attn.rotary_emb.inv_freq", tie_word_embeddings=False)
    assert not vllm_skips_name("model.embed_tokens.weight", tie_word_embeddings=True)


def test_llm_client_wraps_payloads_as_vllm_requests():
    calls = []

    class FakeLLM:
        def init_weight_transfer_engine(self, request):
            calls.append(("init", request))

        def start_weight_update(self):
            calls.append(("start",))

        def update_weights(self, request):
            calls.append(("update", request))

        def finish_weight_update(self, weight_version=None):
            calls.append(("finish", weight_version))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache",))
            return True

    client = LLMWeightSyncClient(FakeLLM())
    client.init_weight_transfer_engine({"world_size": 2})
    client.start_weight_update()
    client.update_weights({"names": ["w"]})
    client.finish_weight_update("3")
    assert calls == [
        ("init", {"init_info": {"world_size": 2}}),
        ("start",),
        ("update", {"update_info": {"names": ["w"]}}),
        ("finish", "3"),
        ("reset_prefix_cache",),  # KV computed with the old weights must not be reused
    ]


def test_worker_extension_fingerprint_on_a_fake_worker():
    class FakeRunner:
        def get_model(self):
            model = torch.nn.Linear(2, 1, bias=True)
            with torch.no_grad():
                model.weight.copy_(torch.tensor([[1.5, -0.5]]))
                model.bias.fill_(2.0)
            return model

    class FakeWorker(CdraWorkerExtension):
        model_runner = FakeRunner()

    worker = FakeWorker()
    assert worker.cdra_weight_fingerprint() == {"weight": 1.0, "bias": 2.0}  # 1.5 - 0.5 = 1.0
    assert worker.cdra_weight_checksum() == 3.0


def test_worker_extension_reports_the_runner_and_attention_backends_vllm_chose():
    class Backend:
        def __init__(self, name):
            self.name = name

        def get_name(self):
            return self.name

    class Group:
        def __init__(self, name):
            self.backend = Backend(name)

    class GPUModelRunner:
        attn_groups = [[Group("FLASH_ATTN"), Group("FLASH_ATTN")], [Group("FLASHINFER")]]

    class FakeWorker(CdraWorkerExtension):
        model_runner = GPUModelRunner()
        device = "cuda:0"

    info = FakeWorker().cdra_runner_info()
    assert info["model_runner"].endswith("GPUModelRunner")
    assert info["attention_backends"] == ["FLASHINFER", "FLASH_ATTN"] and info["device"] == "cuda:0"
