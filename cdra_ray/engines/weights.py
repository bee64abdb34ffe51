"""Which tensors a full weight update must carry, checked the same way by every engine.

Learners publish weights by their Hugging Face names. An update must name every checkpoint tensor with the
right shape (a tied ``lm_head.weight`` may be given or left out): a typo or a missing tensor is an error before
anything is copied, rather than a silently stale layer in the rollout engine (vLLM's layerwise reload would
keep the old values of a layer it received nothing for, and mix old and new values inside a fused one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def checkpoint_weight_shapes(model_dir: str | Path) -> tuple[dict[str, tuple[int, ...]], bool]:
    """Tensor names and shapes stored in a model directory's safetensors files (read from the headers only),
    and whether the config ties ``lm_head`` to the embeddings."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}: save the model with save_pretrained")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    config = json.loads((model_dir / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False)))
    return shapes, tied


def validate_weight_names(
    incoming: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], tied_embeddings: bool, where: str
) -> None:
    """A full update must name every checkpoint tensor with its shape; a tied ``lm_head.weight`` is optional."""
    optional = {"lm_head.weight"} if tied_embeddings and "lm_head.weight" not in shapes else set()
    unknown = sorted(set(incoming) - set(shapes) - optional)
    missing = sorted(set(shapes) - set(incoming))
    wrong = [
        f"{name}: got {tuple(t.shape)}, expected {shapes[name]}"
        for name, t in incoming.items()
        if name in shapes and tuple(t.shape) != shapes[name]
    ]
    problems = []
    if unknown:
        problems.append(f"unknown names {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    if missing:
        problems.append(f"missing names {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
    if wrong:
        problems.append(f"shape mismatches {wrong[:5]}")
    if problems:
        raise ValueError(f"{where}.load_weights: " + "; ".join(problems))
