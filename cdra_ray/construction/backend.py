"""The model calls of the construction council behind one small protocol, so the search is testable without models.

:class:`ModelBackend` implements it over any two :class:`~cdra_ray.engines.base.GenerationEngine` (generator
and evaluator, possibly the same). Judges reuse the reward service's critique-then-forced-score core
(:class:`~cdra_ray.rewards.judge.CritiqueScoreJudge`): the score line is forced by ``SCORE_REGEX`` (or the 0-100
regex) and read by :mod:`cdra_ray.algorithms.scores`, so a score always comes out of an engine that supports
constrained decoding. A reply that still cannot be used (an empty thought or critique, a thought that ran into
the token limit, no score) is asked again once with seeded sampling at ``retry_temperature``; if that fails
too the caller gets ``None`` and marks the node ``unusable`` (counted, never given a made-up score).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence

from cdra_ray.algorithms.steps import STEP_MARKER
from cdra_ray.config.construct import Persona
from cdra_ray.construction import prompts
from cdra_ray.engines.base import GenerationEngine, SamplingSettings
from cdra_ray.messages import Scenario
from cdra_ray.rewards.judge import HUNDRED_SCALE, STEP_SCALE, CritiqueScoreJudge, Verdict, clean_critique
from cdra_ray.rewards.prompts import render_step_critique_prompt


@dataclass(frozen=True)
class Judgement:
    score: float  # on the judge's own scale: [-1, 1] for values and step critiques, 0-100 for final scores
    critique: str


@dataclass(frozen=True)
class ProposeRequest:
    persona: Persona
    thoughts: tuple[str, ...]  # the path so far; empty for a first-step hypothesis


class CouncilBackend(Protocol):
    """What the search asks of the models; every list answer has one entry per request, None = unusable."""

    usage: Counter

    def propose(self, scenario: Scenario, requests: Sequence[ProposeRequest]) -> list[str | None]: ...

    def judge_values(self, scenario: Scenario, items: Sequence[tuple[Sequence[str], str]]) -> list[Judgement | None]:
        """(earlier thoughts, new thought) -> value in [-1, 1] with a short critique."""
        ...

    def answer(self, scenario: Scenario, paths: Sequence[Sequence[str]]) -> list[str | None]: ...

    def judge_finals(self, scenario: Scenario, items: Sequence[tuple[Sequence[str], str]]) -> list[Judgement | None]:
        """(thoughts, final answer) -> holistic score 0-100."""
        ...

    def critique_steps(self, scenario: Scenario, step_lists: Sequence[Sequence[str]]) -> list[Judgement | None]:
        """(steps 1..j) -> critique and score of step j in [-1, 1], with the reward service's prompt."""
        ...


# ----------------------------------------------------------------------------------------------- reply hygiene
_SENTENCE_END = re.compile(r"[.!?](?=[\"')\]]*(\s|$))")
_LABEL = re.compile(r"^(?:\*{1,2}|#+\s*)?(?:hypothesis|thought|follow-up thought|answer|final answer)\s*\d*\s*"
                    r"(?:\*{1,2})?\s*[:\-]\s*(?:\*{1,2})?\s*", re.IGNORECASE)
_SCORE_LINE = re.compile(r"(?<![A-Za-z])score[\s*_\"']{0,4}[:=]", re.IGNORECASE)
MIN_CHARS = 8


def clean_thought(text: str, finish_reason: str, truncated: str) -> str | None:
    """One usable line of generated text, or None.

    Folds the reply onto one line (so it renders as exactly one step), drops a leading "Step k:" or
    "Hypothesis:" label; a reply cut by the token limit is trimmed back to its last full sentence
    (``truncated="trim"``), kept as is (``"keep"``) or refused (``"reject"``).
    """
    line = " ".join(text.split())
    for _ in range(2):  # "Step 2: Hypothesis: ..." loses both labels
        marker = STEP_MARKER.match(line)
        if marker:
            line = line[marker.end():].strip()
        line = _LABEL.sub("", line).strip()
    line = line.strip("\"' ")
    if finish_reason == "length":
        if truncated == "reject":
            return None
        if truncated == "trim":
            ends = [m.end() for m in _SENTENCE_END.finditer(line)]
            line = line[:ends[-1]] if ends else ""
    return line if len(line) >= MIN_CHARS else None


def strip_score_line(text: str) -> str:
    """A judge's free-text reply minus its score line: everything before the last "SCORE:" (or "score =")."""
    found = list(_SCORE_LINE.finditer(text))
    return clean_critique(text[:found[-1].start()] if found else text).strip()


# ----------------------------------------------------------------------------------------------- the model backend
@dataclass(frozen=True)
class BackendSettings:
    temperature: float = 0.0
    top_p: float = 1.0
    retry_temperature: float = 0.7
    thought_max_tokens: int = 64
    answer_max_tokens: int = 128
    critique_max_tokens: int = 96
    truncated: str = "trim"
    seed: int = 0


class ModelBackend:
    """The council on real engines; ``usage`` counts calls, tokens, seconds, retries and unusable replies."""

    def __init__(self, generator: GenerationEngine, evaluator: GenerationEngine, settings: BackendSettings):
        self.generator, self.evaluator, self.s = generator, evaluator, settings
        self.usage: Counter = Counter()

        def judge(engine, fmt, name, temperature, seed):
            return CritiqueScoreJudge(engine, fmt, name=name, critique_max_tokens=settings.critique_max_tokens,
                                      temperature=temperature, score_mode="constrained", seed=seed)

        self._judges = {
            kind: (judge(engine, fmt, kind, settings.temperature, settings.seed),  # first ask, then the one retry
                   judge(engine, fmt, kind + "_retry", settings.retry_temperature, settings.seed + 1))
            for kind, engine, fmt in (("value", evaluator, STEP_SCALE), ("final", evaluator, HUNDRED_SCALE),
                                      ("step", evaluator, STEP_SCALE))
        }

    # ------------------------------------------------------------------ generation
    def _generate(self, kind: str, prompts_ids: list[list[int]], max_tokens: int) -> list[str | None]:
        out: list[str | None] = [None] * len(prompts_ids)
        todo = list(range(len(prompts_ids)))
        for attempt in (0, 1):
            if not todo:
                break
            temperature = self.s.temperature if attempt == 0 else self.s.retry_temperature
            settings = SamplingSettings(temperature=temperature, top_p=self.s.top_p if attempt == 0 else 1.0,
                                        max_new_tokens=max_tokens, seed=self.s.seed + attempt, stop=("\n\n",))
            start = time.perf_counter()
            replies = self.generator.generate([prompts_ids[i] for i in todo], settings)
            self.usage["seconds_generate"] += time.perf_counter() - start
            self.usage[f"{kind}_calls"] += len(todo)
            if attempt:
                self.usage[f"{kind}_retried"] += len(todo)
            for i, (completion,) in zip(todo, replies):
                self.usage["tokens_generated"] += len(completion.token_ids)
                out[i] = clean_thought(completion.text, completion.finish_reason, self.s.truncated)
            todo = [i for i in todo if out[i] is None]
        self.usage[f"{kind}_unusable"] += len(todo)
        return out

    def propose(self, scenario: Scenario, requests: Sequence[ProposeRequest]) -> list[str | None]:
        tok = self.generator.tokenizer
        ids = []
        for r in requests:
            if r.thoughts:
                messages = prompts.followup_messages(r.persona.name, r.persona.role, scenario.preference,
                                                     scenario.query, r.thoughts)
            else:
                messages = prompts.hypothesis_messages(r.persona.name, r.persona.role, scenario.preference,
                                                       scenario.query)
            ids.append(prompts.render_generation_prompt(tok, messages))
        return self._generate("thought", ids, self.s.thought_max_tokens)

    def answer(self, scenario: Scenario, paths: Sequence[Sequence[str]]) -> list[str | None]:
        tok = self.generator.tokenizer
        ids = [prompts.render_generation_prompt(tok, prompts.answer_messages(scenario.preference, scenario.query, p))
               for p in paths]
        return self._generate("answer", ids, self.s.answer_max_tokens)

    # ------------------------------------------------------------------ judging
    def _judge(self, kind: str, prompts_ids: list[list[int]]) -> list[Judgement | None]:
        first, retry = self._judges[kind]
        out: list[Judgement | None] = [None] * len(prompts_ids)
        todo = list(range(len(prompts_ids)))
        for attempt, judge in enumerate((first, retry)):
            if not todo:
                break
            start = time.perf_counter()
            verdicts, served = judge.judge([prompts_ids[i] for i in todo])
            self.usage[f"seconds_{kind}"] += time.perf_counter() - start
            self.usage[f"{kind}_calls"] += sum(1 for how in served if how == "fresh")
            if attempt:
                self.usage[f"{kind}_retried"] += len(todo)
            for i, verdict in zip(todo, verdicts):
                self.usage[f"{kind}_route_{verdict.route}"] += 1
                out[i] = self._usable(verdict, judge)
            todo = [i for i in todo if out[i] is None]
        self.usage[f"{kind}_unusable"] += len(todo)
        return out

    @staticmethod
    def _usable(verdict: Verdict, judge: CritiqueScoreJudge) -> Judgement | None:
        if not verdict.parsed:
            return None
        critique = verdict.critique if verdict.route == "constrained" else strip_score_line(verdict.critique)
        critique = " ".join(critique.split())
        if not critique:
            return None
        fmt = judge.fmt  # verdict scores are on the reward scale [-1, 1]: back to the judge's own scale
        value = fmt.low + (verdict.score + 1.0) / 2.0 * (fmt.high - fmt.low)
        return Judgement(score=round(value, 4), critique=critique)

    def judge_values(self, scenario: Scenario, items: Sequence[tuple[Sequence[str], str]]) -> list[Judgement | None]:
        tok = self.evaluator.tokenizer
        return self._judge("value", [prompts.render_value_prompt(tok, scenario.preference, scenario.query, e, n)
                                     for e, n in items])

    def judge_finals(self, scenario: Scenario, items: Sequence[tuple[Sequence[str], str]]) -> list[Judgement | None]:
        tok = self.evaluator.tokenizer
        return self._judge("final", [prompts.render_final_prompt(tok, scenario.preference, scenario.query, t, a)
                                     for t, a in items])

    def critique_steps(self, scenario: Scenario, step_lists: Sequence[Sequence[str]]) -> list[Judgement | None]:
        tok = self.evaluator.tokenizer
        return self._judge("step", [render_step_critique_prompt(tok, scenario.preference, scenario.query, steps)
                                    for steps in step_lists])
