"""Choose a generation backend by name (config ``engine: vllm | hf | openai``), never by ``if gpu:`` in callers.

Names and option classes are in :mod:`.catalog`; the backends are imported lazily, so choosing ``hf`` never
imports vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cdra_ray.engines.base import GenerationEngine
from cdra_ray.engines.catalog import ENGINE_KINDS, ENGINES
from cdra_ray.registry import options_dict

__all__ = ["ENGINE_KINDS", "create_engine"]


def create_engine(kind: str, model_dir: str | Path, options=None, **keywords) -> GenerationEngine:
    """Build the engine ``kind`` from its options object (or a mapping of them), or from its options as keywords
    (checked either way).

    ``model_dir`` is the model (for ``openai``: the directory of the served model's tokenizer)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {', '.join(ENGINE_KINDS)}")
    if options is not None and keywords:
        raise TypeError("create_engine: pass options or keywords, not both")
    if options is None or isinstance(options, Mapping):  # keywords, or options as a plain mapping (e.g. JSON)
        options = ENGINES.options(kind, dict(options or keywords), key=f"engine {kind}")
    values = options.keywords() if hasattr(options, "keywords") else options_dict(options)
    if "dtype" in values:
        from cdra_ray.engines.catalog import resolve_dtype

        values["dtype"] = resolve_dtype(values["dtype"])
    cls = ENGINES.load(kind)
    if kind == "openai":
        return cls(tokenizer_dir=model_dir, **values)
    return cls(model_dir, **values)
