"""Typed messages that travel between the actors of a CDPA run.

Each stage adds its own fields to a :class:`Group` and passes it on, so a group that reaches the learner
carries its whole provenance: which policy version sampled it, how each response was cut into steps, what
the reward model wrote about every step and what the reference policy thinks of every token.
Lists (not tensors) keep the messages cheap to pickle across Ray and easy to write to JSONL.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    """One (preference P, query q) pair; ``index`` is its position in the data order (the cursor)."""

    uid: str
    preference: str
    query: str
    index: int = 0


@dataclass
class Sample:
    """One sampled response of the policy."""

    response_text: str
    response_token_ids: list[int]  # (C,) generated token ids, EOS included when the engine produced one
    sampling_logprobs: list[float]  # (C,) log pi_behaviour(token) as reported by the engine while sampling
    finish_reason: str = "stop"  # "stop" | "length" (cut off at the token limit)


@dataclass
class StepScore:
    """The reward model's verdict on one scored span of a response (a step, or the whole response)."""

    start: int  # character offsets into the response text, end exclusive
    end: int
    score: float  # already clamped to the reward model's range
    critique: str = ""
    parsed: bool = True  # False when the score is a configured default (nothing could be read)


@dataclass
class Group:
    """G responses to one scenario, enriched stage by stage on its way to the learner."""

    scenario: Scenario
    prompt_token_ids: list[int]  # (L,) the chat-formatted prompt every sample continues
    samples: list[Sample]  # (G,)
    policy_version: int  # learner version whose weights sampled this group
    # filled by segmentation
    step_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # (G, T_i) character spans
    token_steps: list[list[int]] = field(default_factory=list)  # (G, C_i) step index of each token
    # filled by the reward service
    step_scores: list[list[StepScore]] = field(default_factory=list)  # (G, T_i)
    # filled by the reference policy
    ref_logprobs: list[list[float]] = field(default_factory=list)  # (G, C_i) log pi_ref(token)
    # seconds each stage spent on this group (its share of a batched engine call), for the driver's timers
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.samples)

    def num_generated_tokens(self) -> int:
        return sum(len(s.response_token_ids) for s in self.samples)
