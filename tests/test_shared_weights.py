"""Weights packed as raw bytes for Ray's object store: exact round trips, no copies, out-of-band pickling."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from cdra_ray.actors.rollout_worker import RolloutWorker
from cdra_ray.actors.shared_weights import PackedWeights, pack_weights, unpack_weights


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(7, 5, generator=g),
        "norm.weight": torch.randn(5, generator=g).to(torch.bfloat16),
        "half": torch.randn(3, 2, generator=g).half(),
        "steps": torch.arange(4, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }


def test_round_trip_is_exact_for_every_dtype_and_shape():
    weights = _weights()
    back = dict(unpack_weights(pack_weights(weights.items())))
    assert list(back) == list(weights)
    for name, original in weights.items():
        assert back[name].dtype == original.dtype and back[name].shape == original.shape, name
        assert torch.equal(back[name], original), name


def test_packing_and_unpacking_share_memory_instead_of_copying():
    tensor = torch.randn(16, 8)
    packed = pack_weights([("w", tensor)])
    assert packed.arrays[0].ctypes.data == tensor.data_ptr()  # pack: a view
    (_, view), = unpack_weights(packed)
    assert view.data_ptr() == tensor.data_ptr()  # unpack: a view too
    tensor[0, 0] = 123.0
    assert view[0, 0].item() == 123.0


def test_pickle_protocol_5_carries_the_bytes_out_of_band_and_only_a_views_own_bytes():
    # What Ray relies on: numpy buffers leave the pickle stream (Ray writes them to shared memory once).
    flat = torch.randn(10_000)  # like a ZeRO-1/2 flat buffer holding several parameters
    weights = {"a": flat[:100].view(10, 10), "b": flat[100:400].view(20, 15)}
    packed = pack_weights(weights.items())
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    assert [memoryview(b).nbytes for b in buffers] == [400, 1200]  # 100 and 300 floats, not the 40 KB buffer
    assert len(stream) < 2000
    restored = pickle.loads(stream, buffers=buffers)
    for name, tensor in unpack_weights(restored):
        assert torch.equal(tensor, weights[name])


def test_read_only_arrays_unpack_without_a_warning():
    array = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.uint8)  # read-only, like Ray's
    assert not array.flags.writeable
    packed = PackedWeights(("w",), (array,), ("torch.float32",), ((2, 3),))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        (_, tensor), = unpack_weights(packed)
    assert not records, [str(r.message) for r in records]
    assert tensor.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_bad_input_names_the_tensor():
    with pytest.raises(ValueError, match="w.*complex64"):
        pack_weights([("w", torch.zeros(2, dtype=torch.complex64))])
    packed = PackedWeights(("layer.w",), (np.zeros(4, np.uint8),), ("torch.float8",), ((1,),))
    with pytest.raises(ValueError, match="layer.w.*torch.float8"):
        list(unpack_weights(packed))


class _RecordingEngine:
    tokenizer = None

    def __init__(self):
        self.loaded: list[dict[str, torch.Tensor]] = []

    def load_weights(self, named_tensors):
        self.loaded.append({k: v.clone() for k, v in named_tensors})


def test_rollout_worker_loads_packed_weights():
    engine = _RecordingEngine()
    worker = RolloutWorker(engine, group_size=1, max_new_tokens=4, max_wait_s=0.0)
    weights = _weights()
    assert worker.load_weights(pack_weights(weights.items()), policy_version=3) == 3
    assert worker.policy_version == 3
    assert list(engine.loaded[0]) == list(weights)
    assert all(torch.equal(engine.loaded[0][k], v) for k, v in weights.items())
