"""The one interface every generation backend implements (vLLM, transformers).

Rollout workers, the reward service and the reference policy talk to a model only through this protocol, so
choosing a backend is a config value (``engine: vllm | hf``) and never an ``if gpu:`` in the callers.
Prompts go in as token ids (the caller renders the chat template once, with the policy's own tokenizer), so
the token ids the learner trains on are exactly the ones the engine conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; mirrors the vLLM ``SamplingParams`` fields we use."""

    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the stop string itself is not returned
    regex: str | None = None  # constrain the whole completion to this regular expression

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingSettings.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingSettings.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSettings.temperature must be >= 0, got {self.temperature}")


@dataclass
class Completion:
    """One generated continuation."""

    text: str
    token_ids: list[int]  # (C,)
    logprobs: list[float]  # (C,) log-prob of each generated token under the sampling distribution's model
    finish_reason: str  # "stop" | "length"


@runtime_checkable
class GenerationEngine(Protocol):
    """A language model that samples, scores fixed sequences, and takes new weights."""

    @property
    def tokenizer(self): ...

    def generate(self, prompts: Sequence[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """All prompts at once; returns ``settings.n`` completions per prompt, in prompt order."""
        ...

    def sequence_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """log p(continuation token | everything before it), one value per continuation token."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the model's weights (HF parameter names) in place; callers never generate meanwhile."""
        ...
