"""Typed messages that travel between the actors of a CDPA run: values, never mutated after they are built.

A :class:`Group` is born in the rollout worker and each later stage returns a *new* group with its own fields
added (``dataclasses.replace`` under the ``with_*`` methods), so a group that reaches the learner carries its
whole provenance and no stage can change what an earlier one produced. ``scenario``, ``prompt_token_ids``,
``samples`` and ``policy_version`` are the rollout worker's and never change; the others, stage by stage:

======================  ===================================  =============================================
field                   after rollout (+ segmentation)       after reward (``with_scores``)
======================  ===================================  =============================================
``step_spans``          (G, T_i) character spans of the      unchanged: the segmenter's steps
                        segmenter's steps
``token_steps``         (G, C_i) index into ``step_spans``   (G, C_i) index into ``step_scores``: the same
                                                             when the reward scored every step; 0 for every
                                                             token when it scored one span per response
``step_scores``         empty                                (G, T'_i) scored spans, T'_i <= T_i
``ref_logprobs``        None                                 None; the reference stage fills it (G, C) with
                                                             ``with_ref_logprobs``
======================  ===================================  =============================================

Token ids and scores are lists (cheap to pickle, easy to write to JSONL); ``ref_logprobs`` is the reference
model's output tensor as it came out of its batch, so it never goes through Python lists on its way to the
learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # messages must stay importable without torch
    import torch


@dataclass(frozen=True)
class Scenario:
    """One (preference P, query q) pair; ``index`` is its position in the data order (the cursor)."""

    uid: str
    preference: str
    query: str
    index: int = 0


@dataclass(frozen=True)
class Sample:
    """One sampled response of the policy."""

    response_text: str
    response_token_ids: list[int]  # (C,) generated token ids, EOS included when the engine produced one
    sampling_logprobs: list[float]  # (C,) log pi_behaviour(token) as reported by the engine while sampling
    finish_reason: str = "stop"  # "stop" | "length" (cut off at the token limit)


@dataclass(frozen=True)
class StepScore:
    """The reward model's verdict on one scored span of a response (a step, or the whole response)."""

    start: int  # character offsets into the response text, end exclusive
    end: int
    score: float  # already clamped to the reward model's range
    critique: str = ""
    parsed: bool = True  # False when the score is a configured default (nothing could be read)


@dataclass(frozen=True)
class Group:
    """G responses to one scenario; each stage returns a new group with its fields added (module docstring)."""

    scenario: Scenario
    prompt_token_ids: list[int]  # (L,) the chat-formatted prompt every sample continues
    samples: list[Sample]  # (G,)
    policy_version: int  # learner version whose weights sampled this group
    # set by segmentation (rollout worker)
    step_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # (G, T_i) character spans of the steps
    # (G, C_i) per generated token, the index of the span it belongs to: into step_spans after segmentation,
    # into step_scores once scored (the reward may score coarser spans than the steps; see with_scores)
    token_steps: list[list[int]] = field(default_factory=list)
    # set by the reward service
    step_scores: list[list[StepScore]] = field(default_factory=list)  # (G, T'_i) scored spans in text order
    # set by the reference policy: (G, C) float32 log pi_ref(token), C = longest response, 0 beyond each end
    ref_logprobs: "torch.Tensor | None" = None
    # seconds each stage spent on this group (its share of a batched engine call), for the driver's timers
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.samples)

    def num_generated_tokens(self) -> int:
        return sum(len(s.response_token_ids) for s in self.samples)

    # -- stage outputs: each returns a new group ------------------------------------------------------
    def with_segmentation(self, step_spans: list[list[tuple[int, int]]], token_steps: list[list[int]]) -> Group:
        return replace(self, step_spans=step_spans, token_steps=token_steps)

    def with_scores(self, step_scores: list[list[StepScore]], token_steps: list[list[int]]) -> Group:
        """The reward stage's output: scored spans and ``token_steps`` re-indexed over them."""
        return replace(self, step_scores=step_scores, token_steps=token_steps)

    def with_ref_logprobs(self, ref_logprobs: Any) -> Group:
        return replace(self, ref_logprobs=ref_logprobs)

    def with_timing(self, phase: str, seconds: float) -> Group:
        return replace(self, timings={**self.timings, phase: seconds})
