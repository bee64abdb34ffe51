"""Engines for the council on Ray: one engine server per model in an actor, and a client that looks like an engine.

:class:`EngineServer` (plain, testable without Ray) folds concurrent ``generate`` calls from several scenario
tasks into one engine call per distinct :class:`SamplingSettings` (:class:`~cdra_ray.actors.batching.
MicroBatcher`), so four scenarios in flight give the engine batches four times larger. :class:`RemoteEngine`
implements :class:`~cdra_ray.engines.base.GenerationEngine`'s ``generate`` and ``tokenizer`` over an actor
handle, so the judges and the search run unchanged in the scenario task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.config.construct import ConstructConfig
from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.engines.catalog import ENGINES


@dataclass(frozen=True)
class ModelSpec:
    """One model of the council: which engine, where its weights/tokenizer are, and its constructor options."""

    kind: str  # vllm | hf | openai
    model_dir: str  # for openai: the tokenizer directory
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    key: tuple = ()  # equal keys share an engine (the evaluator defaults to the generator's)


def model_specs(c: ConstructConfig, generator_dir: str, evaluator_dir: str) -> tuple[ModelSpec, ModelSpec]:
    """(generator, evaluator) engine specs from the ``construct`` section."""

    def spec(kind: str, model_dir: str, base_url, served_model) -> ModelSpec:
        if kind == "openai":
            options = {"base_url": base_url, "model": served_model, "api_key_env": c.api_key_env,
                       "timeout_s": c.timeout_s, "max_retries": c.max_retries, "max_concurrency": 8 * c.concurrency,
                       "supports_regex": c.supports_regex}
        elif kind == "hf":
            options = {"dtype": c.dtype, "seed": c.seed}
        else:
            options = {"dtype": c.dtype, "seed": c.seed, "max_model_len": c.max_model_len, "kv_cache_gb": c.kv_cache_gb}
        ENGINES.options(kind, options, key=f"construct.engine {kind}")  # checked now, before any actor starts
        return ModelSpec(kind, model_dir, options, key=(kind, model_dir, base_url, served_model))

    generator = spec(c.engine, generator_dir, c.base_url, c.served_model)
    evaluator = spec(c.evaluator_engine or c.engine, evaluator_dir, c.evaluator_base_url or c.base_url,
                     c.evaluator_served_model or c.served_model)
    return generator, evaluator


class EngineServer:
    """Serves ``generate`` for many concurrent callers through one engine, batching what arrives together."""

    def __init__(self, engine, *, max_wait_s: float = 0.02, max_batch: int = 256):
        self.engine = engine
        self._batcher = MicroBatcher(self._run, max_wait_s=max_wait_s, max_batch=max_batch)

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        return self._batcher((prompts, settings))

    def _run(self, calls: list[tuple[list[list[int]], SamplingSettings]]) -> list[list[list[Completion]]]:
        results: list[list[list[Completion]] | None] = [None] * len(calls)
        by_settings: dict[SamplingSettings, list[int]] = {}
        for k, (_, settings) in enumerate(calls):
            by_settings.setdefault(settings, []).append(k)
        for settings, members in by_settings.items():
            prompts = [p for k in members for p in calls[k][0]]
            outs = self.engine.generate(prompts, settings) if prompts else []
            start = 0
            for k in members:
                n = len(calls[k][0])
                results[k] = outs[start:start + n]
                start += n
        return results  # type: ignore[return-value]

    def batch_sizes(self) -> list[int]:
        return list(self._batcher.batch_sizes)


@functools.lru_cache(maxsize=8)
def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


class RemoteEngine:
    """The part of the engine protocol the council uses, over an :class:`EngineServer` actor handle."""

    def __init__(self, handle, tokenizer_dir: str):
        self.handle, self.tokenizer_dir = handle, tokenizer_dir

    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    def generate(self, prompts: Sequence[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        import ray

        return ray.get(self.handle.generate.remote([list(p) for p in prompts], settings))
