"""Weights through Ray's object store without copies: each tensor's raw bytes as a numpy array.

Ray pickles a torch tensor in band: its bytes are copied into the pickle, and copied out again by every reader.
A numpy array goes out of band instead: written once into the node's shared memory, and mapped, not copied, by
a reader on the same node. For SmolLM2-135M (540 MB fp32) that took the learner -> rollout hand-over from
seconds to a fraction of one (``benchmarks/bench_weight_sync.py`` measures both side by side). Bytes rather
than typed arrays because numpy has no bfloat16.

The unpacked tensors are views of read-only shared memory: engines copy from them (``load_weights``), never into
them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                               torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}


@dataclass(frozen=True)
class PackedWeights:
    """Named tensors as (uint8 array, dtype name, shape) triples; what the learner actor returns to Ray."""

    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def pack_weights(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PackedWeights:
    """Byte views of CPU tensors (a copy only for a non-contiguous one).

    The views alias the tensors: serialize the result (Ray does, when an actor method returns it) before the
    tensors change. A view into a larger buffer ships only its own bytes.
    """
    names, arrays, dtypes, shapes = [], [], [], []
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            raise ValueError(f"pack_weights: {name} is on {tensor.device}; move it to the CPU first (or use NCCL)")
        if str(tensor.dtype) not in _DTYPES:
            raise ValueError(f"pack_weights: {name} has dtype {tensor.dtype}, not one of {sorted(_DTYPES)}")
        names.append(name)
        arrays.append(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
        dtypes.append(str(tensor.dtype))
        shapes.append(tuple(tensor.shape))
    return PackedWeights(tuple(names), tuple(arrays), tuple(dtypes), tuple(shapes))


def unpack_weights(packed: PackedWeights) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views of the packed bytes, without copying them."""
    for name, array, dtype, shape in zip(packed.names, packed.arrays, packed.dtypes, packed.shapes):
        if dtype not in _DTYPES:
            raise ValueError(f"unpack_weights: {name} has dtype {dtype!r}, not one of {sorted(_DTYPES)}")
        with warnings.catch_warnings():  # Ray hands out read-only arrays; the engines only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(array)
        if raw.numel() == 0:  # an empty array's stride is 0, which a dtype view refuses
            yield name, torch.empty(shape, dtype=_DTYPES[dtype])
        else:
            yield name, raw.view(_DTYPES[dtype]).reshape(shape)
