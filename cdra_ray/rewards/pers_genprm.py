"""Pers-GenPRM scoring (paper §2.3, Eq. 1): for every step j of every response, (P, q, steps 1..j) -> critique,
then a score in [-1, 1].

How a batch is scored:
1. Every (group, response, step) becomes one request, rendered with the judge's chat template
   (``prompts.py``). Requests already answered in an earlier batch come from the LRU cache; identical requests
   inside the batch are sent once.
2. All remaining requests of all groups go to the engine together, one ``generate`` call per phase (every
   step's request is independent of the others, so nothing waits for anything).
3. ``score_mode="constrained"`` (default) makes the score line structurally certain: phase 1 writes the
   critique freely and stops at the string "SCORE" (the model never writes its own score); phase 2 continues
   prompt + critique + "\\nSCORE:" greedily under a regex that only admits a number in [-1, 1]. Departure from
   the paper, on purpose: the paper's model writes its score freely, and a small model that misses the format
   gets the default score for every step, so every advantage is 0 and nothing is learned, silently.
   ``score_mode="free"`` is the paper's behaviour: one free generation, parsed.
4. An output that still yields no score (an engine without regex support, or free mode) falls back to a free
   generation parsed as free text, then one greedy retry, then the configured default. Every route is counted
   in :class:`~cdra_ray.rewards.base.RewardMetrics`; when the run's parse rate drops under
   ``parse_rate_floor`` the next batch raises :class:`~cdra_ray.rewards.base.RewardParseError`.

Only the judge's own output is ever parsed: the policy's response is inside the prompt, never inside the
parsed text, so a response that writes "SCORE: 1.0" cannot score itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from cdra_ray.algorithms.scores import parse_step_score
from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.engines.base import Completion, GenerationEngine, SamplingSettings
from cdra_ray.messages import Group, StepScore
from cdra_ray.rewards.base import RewardMetrics, RewardOutput, RewardParseError, register_reward_model
from cdra_ray.rewards.cache import LRUCache, request_key
from cdra_ray.rewards.prompts import SCORE_PREFIX, encode_text, encode_untrusted, render_step_critique_prompt

logger = logging.getLogger(__name__)

# A number in [-1, 1] with at most two decimals: -1, -0.35, 0, 0.7, 1.0 (an optional leading space lets the
# tokenizer use its usual " 0" tokens after "SCORE:").
SCORE_REGEX = r" ?-?(0(\.[0-9]{1,2})?|1(\.0{1,2})?)"
CRITIQUE_STOP = "SCORE"
SCORE_MODES = ("constrained", "free")


@dataclass
class _Result:
    """What the judge said about one unique request."""

    score: float
    critique: str
    parsed: bool
    route: str  # "constrained" | "free" | "default"
    retried: bool = False
    raw: str = ""  # the last raw output looked at (for error messages)


@dataclass
class _Request:
    group: int
    response: int
    span: tuple[int, int]
    key: str


def clean_critique(text: str) -> str:
    """The critique as cut at the "SCORE" stop string, minus the markup that led into it ("**", "#", ...)."""
    return text.rstrip(" \t\r\n*#_`>[(:")


@register_reward_model("pers_genprm")
class PersGenPRM:
    """Step-wise critique-then-score reward model over any :class:`GenerationEngine`.

    The judge is frozen for a run, so results are cached by the hash of the rendered request and the generation
    settings. Spans come from ``Group.step_spans`` (set upstream by segmentation, which also mapped tokens to
    those spans, so they are scored as given); a group without spans is segmented here with
    :func:`~cdra_ray.algorithms.steps.segment_steps` and ``max_steps``.
    """

    def __init__(
        self,
        engine: GenerationEngine,
        *,
        critique_max_tokens: int = 128,
        critique_temperature: float = 0.0,
        score_mode: str = "constrained",
        default_score: float = 0.0,
        parse_rate_floor: float = 0.95,
        min_requests_for_floor: int = 20,
        max_steps: int | None = None,
        cache_size: int = 50_000,
        score_max_tokens: int = 8,
        seed: int | None = None,
    ) -> None:
        if score_mode not in SCORE_MODES:
            raise ValueError(f"PersGenPRM score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if critique_max_tokens < 1:
            raise ValueError(f"PersGenPRM critique_max_tokens must be >= 1, got {critique_max_tokens}")
        if score_max_tokens < 4:
            raise ValueError(f"PersGenPRM score_max_tokens must be >= 4 (room for ' -0.35'), got {score_max_tokens}")
        if critique_temperature < 0:
            raise ValueError(f"PersGenPRM critique_temperature must be >= 0, got {critique_temperature}")
        if not 0.0 <= parse_rate_floor <= 1.0:
            raise ValueError(f"PersGenPRM parse_rate_floor must lie in [0, 1], got {parse_rate_floor}")
        if not -1.0 <= default_score <= 1.0:
            raise ValueError(f"PersGenPRM default_score must lie in [-1, 1], got {default_score}")
        if min_requests_for_floor < 1:
            raise ValueError(f"PersGenPRM min_requests_for_floor must be >= 1, got {min_requests_for_floor}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"PersGenPRM max_steps must be >= 1 or None, got {max_steps}")
        self.engine = engine
        self.critique_max_tokens = critique_max_tokens
        self.critique_temperature = critique_temperature
        self.score_mode = score_mode
        self.default_score = default_score
        self.parse_rate_floor = parse_rate_floor
        self.min_requests_for_floor = min_requests_for_floor
        self.max_steps = max_steps
        self.score_max_tokens = score_max_tokens
        self.seed = seed
        self.cache: LRUCache[_Result] = LRUCache(cache_size)
        self.metrics = RewardMetrics()  # totals over the run so far (the floor is checked on these)
        self._settings_tag = (
            f"pers_genprm|mode={score_mode}|cmax={critique_max_tokens}|ctemp={critique_temperature}"
            f"|smax={score_max_tokens}|regex={SCORE_REGEX}|seed={seed}"
        )
        self._warned_no_regex = False

    # ---------------------------------------------------------------- generation settings of each phase
    @property
    def _critique_settings(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.critique_temperature,
            max_new_tokens=self.critique_max_tokens,
            stop=(CRITIQUE_STOP,),
            seed=self.seed,
        )

    @property
    def _score_settings(self) -> SamplingSettings:
        return SamplingSettings(temperature=0.0, max_new_tokens=self.score_max_tokens, regex=SCORE_REGEX)

    def _free_settings(self, temperature: float) -> SamplingSettings:
        # a whole free answer: the critique budget plus room for the "\nSCORE: x" line
        return SamplingSettings(
            temperature=temperature,
            max_new_tokens=self.critique_max_tokens + self.score_max_tokens + 4,
            seed=self.seed if temperature > 0 else None,
        )

    # ---------------------------------------------------------------- public API
    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        """Score every step of every response of ``groups`` with one engine call per phase."""
        requests, prompts = self._build_requests(groups)

        # cache hits, in-batch duplicates, and the unique requests left for the engine
        metrics = [RewardMetrics() for _ in groups]
        results: dict[str, _Result] = {}
        pending: list[str] = []  # unique keys to generate, in first-seen order
        owner: dict[str, int] = {}  # key -> group whose metrics count its generation
        for req in requests:
            m = metrics[req.group]
            m.requests += 1
            if req.key in owner:  # generated once for an earlier request of this batch
                m.deduplicated += 1
                continue
            if req.key in results:  # an earlier request of this batch was already served by the cache
                m.cache_hits += 1
                continue
            cached = self.cache.get(req.key)
            if cached is not None:
                m.cache_hits += 1
                results[req.key] = cached
                continue
            owner[req.key] = req.group
            pending.append(req.key)

        fresh = self._generate(pending, [prompts[k] for k in pending])
        for key, result in fresh.items():
            m = metrics[owner[key]]
            if result.route == "constrained":
                m.parsed_constrained += 1
            elif result.route == "free":
                m.parsed_free += 1
            else:
                m.defaulted += 1
                m.example_unparsed = m.example_unparsed or result.raw[-400:]
            m.retried += int(result.retried)
            if result.parsed:  # a default is not the model's answer: ask again next time
                self.cache.put(key, result)
        results.update(fresh)

        outputs = [RewardOutput(step_scores=[[] for _ in g.samples], metrics=m) for g, m in zip(groups, metrics)]
        for req in requests:
            r = results[req.key]
            outputs[req.group].step_scores[req.response].append(
                StepScore(start=req.span[0], end=req.span[1], score=r.score, critique=r.critique, parsed=r.parsed)
            )

        self.metrics = self.metrics.merge(RewardMetrics.total(metrics))
        self._check_parse_rate(outputs)
        return outputs

    # ---------------------------------------------------------------- steps
    def _spans(self, group: Group) -> list[list[tuple[int, int]]]:
        if not group.step_spans:
            return [segment_steps(s.response_text, self.max_steps) for s in group.samples]
        if len(group.step_spans) != group.size:
            raise ValueError(
                f"Group {group.scenario.uid!r}: step_spans has {len(group.step_spans)} entries for "
                f"{group.size} samples"
            )
        return [[tuple(span) for span in spans] for spans in group.step_spans]

    def _build_requests(self, groups: Sequence[Group]) -> tuple[list[_Request], dict[str, list[int]]]:
        """One request per (group, response, step), in order; rendered prompts by key."""
        tokenizer = self.engine.tokenizer
        requests: list[_Request] = []
        prompts: dict[str, list[int]] = {}
        rendered: dict[tuple[str, str, tuple[str, ...]], str] = {}  # skip re-rendering identical contexts
        for gi, group in enumerate(groups):
            P, q = group.scenario.preference, group.scenario.query
            for ri, (sample, spans) in enumerate(zip(group.samples, self._spans(group))):
                text = sample.response_text
                for start, end in spans:
                    if not 0 <= start <= end <= len(text):
                        raise ValueError(
                            f"Group {group.scenario.uid!r} response {ri}: step span ({start}, {end}) lies outside "
                            f"its text of {len(text)} characters"
                        )
                steps = [text[s:e] for s, e in spans]
                for j, span in enumerate(spans):
                    context = (P, q, tuple(steps[: j + 1]))
                    key = rendered.get(context)
                    if key is None:
                        ids = render_step_critique_prompt(tokenizer, P, q, context[2])
                        key = request_key(ids, self._settings_tag)
                        rendered[context] = key
                        prompts[key] = ids
                    requests.append(_Request(group=gi, response=ri, span=(span[0], span[1]), key=key))
        return requests, prompts

    # ---------------------------------------------------------------- generation
    def _call(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Completion]:
        outs = self.engine.generate(prompts, settings)
        if len(outs) != len(prompts):
            raise RuntimeError(f"engine returned {len(outs)} results for {len(prompts)} prompts")
        return [o[0] for o in outs]

    def _generate(self, keys: list[str], prompts: list[list[int]]) -> dict[str, _Result]:
        """Results for the unique pending requests; at most one engine call per phase."""
        results: dict[str, _Result] = {}
        if not keys:
            return results
        todo = list(range(len(keys)))
        last_raw = {i: "" for i in todo}
        critiques: dict[int, str] = {}

        if self.score_mode == "constrained":
            crit = self._call(prompts, self._critique_settings)
            for i, c in enumerate(crit):
                critiques[i] = clean_critique(c.text)
            tokenizer = self.engine.tokenizer
            # the critique continues the prompt (as text: a special-token string it may have echoed from the
            # response stays text); then the score line is forced
            score_prompts = [
                prompts[i]
                + (encode_untrusted(tokenizer, critiques[i] + "\n") if critiques[i] else [])
                + encode_text(tokenizer, SCORE_PREFIX)
                for i in todo
            ]
            try:
                scored = self._call(score_prompts, self._score_settings)
            except NotImplementedError as err:  # an engine that cannot constrain: use the free-form route
                if not self._warned_no_regex:
                    logger.warning("engine %s has no regex-constrained decoding (%s); parsing free-form output",
                                   type(self.engine).__name__, err)
                    self._warned_no_regex = True
                scored = [Completion(text="", token_ids=[], logprobs=[], finish_reason="stop") for _ in todo]
            left = []
            for i, c in zip(todo, scored):
                value = parse_step_score(SCORE_PREFIX + " " + c.text.strip())
                last_raw[i] = critiques[i] + "\n" + SCORE_PREFIX + c.text
                if value is None:
                    left.append(i)
                else:
                    results[keys[i]] = _Result(score=value, critique=critiques[i], parsed=True, route="constrained")
            todo = left

            if todo:  # free-form fallback: one whole free generation, parsed as free text
                free = self._call([prompts[i] for i in todo], self._free_settings(self.critique_temperature))
                todo = self._parse_free(keys, todo, free, results, last_raw, retried=False)
        else:
            free = self._call(prompts, self._free_settings(self.critique_temperature))
            todo = self._parse_free(keys, todo, free, results, last_raw, retried=False)

        if todo:  # one greedy retry
            retry = self._call([prompts[i] for i in todo], self._free_settings(0.0))
            todo = self._parse_free(keys, todo, retry, results, last_raw, retried=True)

        for i in todo:
            results[keys[i]] = _Result(
                score=self.default_score, critique=last_raw[i], parsed=False, route="default", retried=True,
                raw=last_raw[i],
            )
        return results

    @staticmethod
    def _parse_free(
        keys: list[str],
        todo: list[int],
        outs: list[Completion],
        results: dict[str, _Result],
        last_raw: dict[int, str],
        *,
        retried: bool,
    ) -> list[int]:
        """Parse free outputs (the judge's text only); returns the indices still without a score."""
        left = []
        for i, c in zip(todo, outs):
            value = parse_step_score(c.text)
            last_raw[i] = c.text
            if value is None:
                left.append(i)
            else:
                results[keys[i]] = _Result(score=value, critique=c.text.strip(), parsed=True, route="free",
                                           retried=retried)
        return left

    # ---------------------------------------------------------------- safety net
    def _check_parse_rate(self, outputs: list[RewardOutput]) -> None:
        m = self.metrics
        if m.generated < self.min_requests_for_floor or m.parse_rate >= self.parse_rate_floor:
            return
        raise RewardParseError(
            f"Pers-GenPRM parse rate {m.parse_rate:.1%} is below parse_rate_floor {self.parse_rate_floor:.1%}: "
            f"of {m.generated} generated scoring requests, {m.parsed_constrained} were parsed from the constrained "
            f"score, {m.parsed_free} from free text, {m.retried} needed a retry and {m.defaulted} got the default "
            f"score {self.default_score} (score_mode={self.score_mode!r}). Example unparsed output: "
            f"{m.example_unparsed!r}. Use score_mode='constrained' with an engine that supports regex "
            f"constraints, give critiques more room (critique_max_tokens), or lower parse_rate_floor.",
            outputs,
        )
