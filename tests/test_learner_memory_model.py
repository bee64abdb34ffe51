"""ZeRO memory arithmetic checked against hand computation (16 B per parameter for mixed-precision AdamW)."""

import pytest

from cdra_ray.learner.memory_model import (
    GB,
    QWEN25_7B,
    ModelShape,
    activation_bytes,
    extrapolate_peak,
    memory_rows,
    model_state_bytes,
    Layout,
)

P = 1e9  # a 1 B-parameter model makes every figure readable in GB


def test_one_rank_mixed_precision_adamw_is_16_bytes_per_parameter_whatever_the_stage():
    for stage in (0, 1, 2, 3):
        m = model_state_bytes(P, ranks=1, zero_stage=stage)
        assert (m.weights_gpu, m.grads_gpu, m.master_gpu, m.adam_gpu) == (2 * GB, 2 * GB, 4 * GB, 8 * GB)
        assert m.gpu == 16 * GB and m.cpu == 0


def test_each_zero_stage_partitions_one_more_state_across_ranks():
    # 4 ranks: stage 1 splits master + Adam (12 B -> 3 B), stage 2 also grads (2 -> 0.5), stage 3 also weights
    assert model_state_bytes(P, ranks=4, zero_stage=0).gpu == 16 * GB
    assert model_state_bytes(P, ranks=4, zero_stage=1).gpu == (2 + 2 + 3) * GB
    assert model_state_bytes(P, ranks=4, zero_stage=2).gpu == (2 + 0.5 + 3) * GB
    assert model_state_bytes(P, ranks=4, zero_stage=3).gpu == 4 * GB  # 16 / 4


def test_optimizer_offload_moves_master_moments_and_fp32_grads_to_cpu():
    m = model_state_bytes(P, ranks=2, zero_stage=3, offload_optimizer=True)
    assert m.gpu == 1 * GB  # the 16-bit weight shard only (2 B / 2 ranks)
    assert (m.grads_cpu, m.master_cpu, m.adam_cpu) == (2 * GB, 2 * GB, 4 * GB)  # (4, 4, 8) B / 2 ranks
    both = model_state_bytes(P, ranks=2, zero_stage=3, offload_optimizer=True, offload_params=True)
    assert both.gpu == 0 and both.cpu == 9 * GB


def test_fp32_training_has_no_separate_master_copy():
    m = model_state_bytes(P, ranks=1, zero_stage=0, precision="fp32")
    assert (m.weights_gpu, m.grads_gpu, m.master_gpu, m.adam_gpu) == (4 * GB, 4 * GB, 0, 8 * GB)


def test_qwen7b_on_one_rank_cannot_fit_without_offload_and_fits_with_it():
    alone = model_state_bytes(QWEN25_7B.params, ranks=1, zero_stage=3)
    assert alone.gpu / GB == pytest.approx(121.9, abs=0.1)  # 7.62 B x 16 B: beyond a 96 GB H20
    offload = model_state_bytes(QWEN25_7B.params, ranks=1, zero_stage=3, offload_optimizer=True)
    assert offload.gpu / GB == pytest.approx(15.24) and offload.cpu / GB == pytest.approx(121.9, abs=0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"zero_stage": 4}, "zero_stage"), ({"ranks": 0}, "ranks"), ({"precision": "int8"}, "precision"),
    ({"zero_stage": 2, "offload_params": True}, "stage 3"), ({"zero_stage": 0, "offload_optimizer": True}, ">= 1"),
])
def test_invalid_layouts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_state_bytes(P, **kwargs)


def test_activation_estimate_by_hand():
    shape = ModelShape("toy", 1e6, hidden=10, layers=3, intermediate=20, vocab=100)
    # checkpointed: 7 tokens x 10 hidden x 3 layers x 2 B = 420; one layer 7 x (80 + 60) x 2 = 1960;
    # logits + grad 2 x 7 x 100 x 2 = 2800
    assert activation_bytes(shape, 7) == 420 + 1960 + 2800
    assert activation_bytes(shape, 7, checkpointing=False) == 3 * 1960 + 2800


def test_extrapolation_keeps_the_measured_overhead_and_swaps_states_and_activations():
    out = extrapolate_peak(measured_peak=5.0, measured_states=3.0, target_states=100.0, target_activations=20.0)
    assert out == {"overhead": 2.0, "states": 100.0, "activations": 20.0, "peak": 122.0}
    assert extrapolate_peak(1.0, 3.0, 10.0, 1.0)["overhead"] == 0.0  # never negative


def test_rows_add_activations_and_zero3_buffers_to_the_gpu_total():
    (row,) = memory_rows(QWEN25_7B, [Layout("x", 2, 3, offload_optimizer=True)], tokens=1000)
    expected = (QWEN25_7B.params + activation_bytes(QWEN25_7B, 1000) + 3 * GB) / GB  # 2 B / 2 ranks = 1 B/param
    assert row["gpu_total"] == pytest.approx(expected)
    assert row["cpu"] == pytest.approx(QWEN25_7B.params * 8 / GB)  # (4 + 4 + 8) / 2
