"""A Yes/No judge over any :class:`~cdra_ray.engines.GenerationEngine` (vLLM, transformers, OpenAI endpoint).

Why not the reward judges' critique-then-score core (:mod:`cdra_ray.rewards.judge`): evaluation needs a verdict
that is either read from the judge or reported as unreadable, never a default score folded into a metric, and a
question-specific first field (PrefEval's acknowledgement check quotes the response instead of explaining).

One request = one question about one response. Per batch, at temperature 0 by default:

1. ``constrained=True``: the judge writes its first field freely (explanation or quote; it stops at the closing
   tag or at ``<answer``), then ``<answer>`` is appended and the word is forced by the regex ``(Yes|No)``. An
   engine that cannot constrain (an endpoint without vLLM's structured outputs) makes the judge switch to free mode,
   once, with a warning. ``constrained=False``: one free generation up to ``</answer>``.
2. The judge's own text is parsed with :func:`cdra_ray.algorithms.scores.parse_judge_answer`.
3. A request whose answer cannot be read is asked once more, with a note that the format was wrong; if it still
   cannot be read it is returned with ``answer=None`` (counted as unparsed by the caller, never guessed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from cdra_ray.algorithms.scores import parse_judge_answer
from cdra_ray.engines.base import GenerationEngine, SamplingSettings
from cdra_ray.evaluation.prompts import QUESTION_SET, render_question
from cdra_ray.rewards.prompts import encode_text, encode_untrusted

logger = logging.getLogger(__name__)

ANSWER_REGEX = "(Yes|No)"
FIELD_STOPS = ("</explanation>", "</preference>", "<answer")


@dataclass
class Judgment:
    answer: Optional[bool]  # None = unreadable after the retry
    lead: str  # the first field: the explanation (or, for pf_acknowledge, the quoted preference sentence)
    raw: str  # the judge's text as parsed (first tag included)
    attempts: int  # 1, or 2 when the first answer could not be read
    route: str  # "constrained" | "free"


def extract_field(text: str, tag: str) -> str:
    """The content of ``<tag>...</tag>`` in a judge's text (up to ``<answer`` or the end if never closed)."""
    match = re.search(rf"<{tag}>(.*?)(?:</{tag}>|<answer|\Z)", text, re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match else ""


class YesNoJudge:
    def __init__(self, engine: GenerationEngine, *, constrained: bool = True, max_new_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0) -> None:
        if max_new_tokens < 1 or temperature < 0:
            raise ValueError(f"YesNoJudge: max_new_tokens >= 1 and temperature >= 0, got {max_new_tokens}, "
                             f"{temperature}")
        self.engine = engine
        self.constrained = constrained
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed

    def ask(self, requests: Sequence[tuple[str, dict[str, str]]], *, temperature: float | None = None
            ) -> list[Judgment]:
        """One :class:`Judgment` per ``(question name, field values)`` request, in order."""
        temp = self.temperature if temperature is None else temperature
        questions = [QUESTION_SET[name] for name, _ in requests]
        tok = self.engine.tokenizer
        first = self._answer([render_question(tok, q, v) for q, (_, v) in zip(questions, requests)], questions, temp)
        todo = [i for i, j in enumerate(first) if j.answer is None]
        if todo:
            again = self._answer([render_question(tok, questions[i], requests[i][1], retry=True) for i in todo],
                                 [questions[i] for i in todo], temp)
            for i, judgment in zip(todo, again):
                judgment.attempts = 2
                first[i] = judgment
        return first

    # ------------------------------------------------------------------ one attempt over a batch
    def _settings(self, temp: float, **kw) -> SamplingSettings:
        return SamplingSettings(temperature=temp, seed=self.seed if temp > 0 else None, **kw)

    def _answer(self, prompts: list[list[int]], questions, temp: float) -> list[Judgment]:
        if not prompts:
            return []
        if self.constrained:
            try:
                return self._constrained(prompts, questions, temp)
            except NotImplementedError as err:  # no regex support on this engine: free text from now on
                logger.warning("judge engine %s cannot constrain the answer (%s); parsing free text",
                               type(self.engine).__name__, err)
                self.constrained = False
        return self._free(prompts, questions, temp)

    def _constrained(self, prompts, questions, temp) -> list[Judgment]:
        tok = self.engine.tokenizer
        leads = [o[0].text for o in self.engine.generate(
            prompts, self._settings(temp, max_new_tokens=self.max_new_tokens, stop=FIELD_STOPS))]
        leads = [t.split("</")[0].strip() for t in leads]  # a stop string is cut already; drop a stray close tag
        second = [p + encode_untrusted(tok, lead) + encode_text(tok, f"</{q.lead_tag}>\n<answer>")
                  for p, lead, q in zip(prompts, leads, questions)]
        words = [o[0].text for o in self.engine.generate(
            second, SamplingSettings(temperature=0.0, max_new_tokens=4, regex=ANSWER_REGEX))]
        out = []
        for lead, word, q in zip(leads, words, questions):
            raw = f"<{q.lead_tag}>{lead}</{q.lead_tag}>\n<answer>{word.strip()}</answer>"
            out.append(Judgment(parse_judge_answer(raw), lead, raw, 1, "constrained"))
        return out

    def _free(self, prompts, questions, temp) -> list[Judgment]:
        outs = self.engine.generate(prompts, self._settings(temp, max_new_tokens=self.max_new_tokens + 16,
                                                            stop=("</answer>",)))
        result = []
        for o, q in zip(outs, questions):
            raw = f"<{q.lead_tag}>" + o[0].text
            result.append(Judgment(parse_judge_answer(raw), extract_field(raw, q.lead_tag), raw, 1, "free"))
        return result
