"""Pure parts of the GPU weight broadcast: what is sent in which order, rank layout, payloads vLLM accepts.

The NCCL transfer itself needs CUDA; these tests pin everything that decides whether both sides agree.
"""

from __future__ import annotations

import threading

import pytest
import torch

from cdra_ray.learner.weight_sync_gpu import (
    FanOutSyncClient,
    GatheredWeightSource,
    NcclWeightSync,
    TensorSpec,
    broadcast_plan,
    full_shape,
    payload_bytes,
    rank_offsets,
    update_info,
    worker_init_infos,
)


def tiny_llama(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, head_dim=32, intermediate_size=96, vocab_size=50,
                                        tie_word_embeddings=tie))


def test_plan_follows_named_parameters_and_casts_to_the_wire_dtype():
    model = tiny_llama()
    plan = broadcast_plan(model.named_parameters(), dtype=torch.bfloat16)
    assert [s.name for s in plan] == [n for n, _ in model.named_parameters()]
    assert plan[0] == TensorSpec("model.embed_tokens.weight", torch.bfloat16, (50, 64))
    assert plan[-1] == TensorSpec("lm_head.weight", torch.bfloat16, (50, 64))
    assert all(s.dtype == torch.bfloat16 for s in plan)
    assert broadcast_plan(model.named_parameters())[0].dtype == torch.float32  # None keeps the own dtype


def test_plan_sends_tied_weights_once():
    names = [s.name for s in broadcast_plan(tiny_llama(tie=True).named_parameters())]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_zero3_partitioned_parameter_reports_its_full_shape():
    param = torch.nn.Parameter(torch.empty(0))  # what a ZeRO-3 rank holds locally
    param.ds_shape = torch.Size([4, 8])
    assert full_shape(param) == (4, 8)
    assert broadcast_plan([("w", param)]) == [TensorSpec("w", torch.float32, (4, 8))]


def test_plan_rejects_duplicates_and_empty_models():
    p = torch.zeros(2)
    with pytest.raises(ValueError, match="appears twice"):
        broadcast_plan([("a", p), ("a", p)])
    with pytest.raises(ValueError, match="no parameters"):
        broadcast_plan([])


def test_update_info_and_payload_size():
    plan = [TensorSpec("a", torch.bfloat16, (2, 3)), TensorSpec("b", torch.float32, (5,))]
    assert update_info(plan) == {"names": ["a", "b"], "dtype_names": ["bfloat16", "float32"],
                                 "shapes": [[2, 3], [5]]}
    assert payload_bytes(plan) == 2 * 3 * 2 + 5 * 4  # 12 bf16 bytes + 20 fp32 bytes = 32


def test_rank_layout_learner_first_then_each_engine():
    # engines of 1, 2 and 4 workers: ranks 1 | 2-3 | 4-7, plus the learner at 0 -> world of 8
    assert rank_offsets([1, 2, 4]) == ([1, 2, 4], 8)
    infos = worker_init_infos("10.0.0.1", 29555, [1, 2, 4], packed=False)
    assert [i["rank_offset"] for i in infos] == [1, 2, 4]
    assert {i["world_size"] for i in infos} == {8}
    assert infos[0] == {"master_address": "10.0.0.1", "master_port": 29555, "rank_offset": 1, "world_size": 8,
                        "packed": False, "packed_buffer_size_bytes": 1024**3, "packed_num_buffers": 2}
    with pytest.raises(ValueError, match="engine 1 has world size 0"):
        rank_offsets([1, 0])
    with pytest.raises(ValueError, match="not a TCP port"):
        worker_init_infos("h", 0, [1])


class FakeEngine:
    """Records calls; ``init`` waits at a barrier that only opens when every engine is inside it at once."""

    def __init__(self, barrier: threading.Barrier, log: list):
        self.barrier, self.log = barrier, log

    def init_weight_transfer_engine(self, init_info):
        self.barrier.wait()  # a sequential fan-out would time out here (as NCCL would hang)
        self.log.append(("init", init_info["rank_offset"], init_info["world_size"]))

    def start_weight_update(self):
        self.log.append(("start",))

    def update_weights(self, update_info):
        self.barrier.wait()
        self.log.append(("update", tuple(update_info["names"])))

    def finish_weight_update(self, weight_version=None):
        self.log.append(("finish", weight_version))


def test_fan_out_calls_engines_concurrently_with_their_own_rank_offsets():
    barrier, log = threading.Barrier(2, timeout=20), []
    client = FanOutSyncClient([FakeEngine(barrier, log), FakeEngine(barrier, log)], [2, 3])
    client.init_weight_transfer_engine({"world_size": 6, "rank_offset": 1})  # 1 learner + 2 + 3 workers
    assert sorted(e for e in log if e[0] == "init") == [("init", 1, 6), ("init", 3, 6)]
    client.update_weights({"names": ["w"]})
    client.weight_version = "7"
    client.finish_weight_update()
    assert log[-2:] == [("finish", "7"), ("finish", "7")]
    with pytest.raises(ValueError, match="world_size 5 != 6"):
        client.init_weight_transfer_engine({"world_size": 5})


def test_sync_trainer_init_kwargs_cover_all_engines():
    sync = NcclWeightSync([object(), object()], [1, 2], master_address="127.0.0.1", master_port=29600,
                          packed=True)
    kwargs = sync.trainer_init_kwargs()
    assert kwargs["world_size"] == 4 and kwargs["rank"] == 0 and kwargs["packed"] is True
    with pytest.raises(RuntimeError, match="before connect"):
        sync.send(1)


@pytest.mark.deepspeed
def test_gathered_source_yields_contiguous_cast_tensors_matching_the_plan():
    model = tiny_llama()
    source = GatheredWeightSource(model, dtype=torch.bfloat16)
    pairs = list(source)
    assert [(n, t.dtype, tuple(t.shape)) for n, t in pairs] == [(s.name, s.dtype, s.shape) for s in source.plan()]
    assert all(t.is_contiguous() for _, t in pairs)
    embed = dict(model.named_parameters())["model.embed_tokens.weight"]
    assert torch.equal(dict(pairs)["model.embed_tokens.weight"], embed.detach().to(torch.bfloat16))


@pytest.mark.vllm
def test_payloads_are_accepted_by_vllms_own_dataclasses():
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLTrainerWeightTransferEngine,
        NCCLWeightTransferInitInfo,
        NCCLWeightTransferUpdateInfo,
    )

    model = tiny_llama()
    source = GatheredWeightSource(model, dtype=torch.bfloat16)
    info = NCCLWeightTransferUpdateInfo(**update_info(source.plan()))
    assert info.names[0] == "model.embed_tokens.weight" and info.dtype_names[0] == "bfloat16"
    for payload in worker_init_infos("127.0.0.1", 29700, [1, 2]):
        worker = NCCLWeightTransferInitInfo(**payload)
        assert worker.world_size == 4 and worker.nccl_unique_id_bytes is None  # TCP rendezvous mode
    sync = NcclWeightSync([object()], [1], master_address="127.0.0.1", master_port=29701)
    assert NCCLTrainerInitInfo(**sync.trainer_init_kwargs()).is_sender
    # vLLM's sender checks iteration against metadata() element by element; ours must agree
    checked = list(NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata()))
    assert len(checked) == len(source.plan())
