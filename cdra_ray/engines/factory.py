"""Choose a generation backend by name (config ``engine: vllm | hf``), never by ``if gpu:`` in callers.

The backends are imported lazily, so choosing ``hf`` never imports vLLM.
"""

from __future__ import annotations

from pathlib import Path

from cdra_ray.engines.base import GenerationEngine

ENGINE_KINDS = ("vllm", "hf", "openai")


def create_engine(kind: str, model_dir: str | Path, **options) -> GenerationEngine:
    """``kind`` = ``"vllm"`` (``VLLMEngine``) or ``"hf"`` (``HFEngine``); ``options`` go to its constructor."""
    if kind == "hf":
        from cdra_ray.engines.hf_engine import HFEngine

        return HFEngine(model_dir, **options)
    if kind == "vllm":
        from cdra_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, **options)
    if kind == "openai":  # a judge behind any OpenAI-compatible endpoint; model_dir holds its tokenizer
        from cdra_ray.engines.openai_http import OpenAIHTTPEngine

        return OpenAIHTTPEngine(tokenizer_dir=model_dir, **options)
    raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {', '.join(ENGINE_KINDS)}")
