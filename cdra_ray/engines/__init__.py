"""Generation backends behind one protocol (:class:`GenerationEngine`): vLLM, plain transformers, and any
OpenAI-compatible endpoint.

``create_engine("vllm" | "hf" | "openai", model_dir, **options)`` picks one (names and options in ``catalog.py``,
torch-free); each backend is imported only when built.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Completion": "cdra_ray.engines.base",
    "GenerationEngine": "cdra_ray.engines.base",
    "SamplingSettings": "cdra_ray.engines.base",
    "ENGINE_KINDS": "cdra_ray.engines.catalog",
    "create_engine": "cdra_ray.engines.factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cdra_ray.engines' has no attribute {name!r}")
