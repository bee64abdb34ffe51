"""Generation backends behind one protocol (:class:`GenerationEngine`): vLLM, plain transformers, and any
OpenAI-compatible endpoint.

``create_engine("vllm" | "hf" | "openai", model_dir, **options)`` picks one (names and options in ``catalog.py``,
torch-free); each backend is imported only when built.
"""

from __future__ import annotations

from cdra_ray.registry import lazy_exports

_EXPORTS = {
    "Completion": "cdra_ray.engines.base",
    "GenerationEngine": "cdra_ray.engines.base",
    "SamplingSettings": "cdra_ray.engines.base",
    "ENGINE_KINDS": "cdra_ray.engines.catalog",
    "create_engine": "cdra_ray.engines.factory",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
