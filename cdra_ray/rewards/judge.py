"""The one critique-then-score judge every generative reward model is built on (``pers_genprm`` scores each step
with it, ``genrm``, ``rubric_rm`` and ``tts`` each whole response): the judge writes a critique, its score line
is forced, and the score is read from the judge's own text only.

A batch of requests (rendered prompt token ids) goes through :class:`CritiqueScoreJudge`:

1. Requests answered in an earlier batch come from an LRU cache (key: the rendered token ids + every setting
   that changes the answer); identical requests in a batch are generated once.
2. ``score_mode="constrained"``: phase 1 writes ``samples`` critiques per request (``n=samples`` in one engine
   call) and stops at the score keyword (``SCORE`` / ``FINAL SCORE``), so the judge never writes its own score;
   phase 2 continues prompt + critique + the score prefix greedily under a regex that admits only a number of the
   judge's scale. The critique goes back in as untrusted text (an echoed ``<|im_end|>`` stays text, never a
   special token). ``score_pass="streamed"`` (engines with ``generate_continued``: vLLM) starts each score line
   the moment its critique stops, in the same engine loop as the critiques still being written, instead of a
   second pass that waits for the longest critique (``"separate"``, any engine); the scores are the same.
   ``score_mode="free"``: one free generation per sample, parsed. A request none of whose samples yields a score
   gets one free generation per sample (constrained mode's fallback), then one greedy retry, then the configured
   default (counted, never cached).
3. The sample scores of a request are mapped to the reward scale [-1, 1] and combined by
   :func:`aggregate_scores` (``mean`` or ``vote``); with one sample that is just the score.

:class:`JudgeRewardModel` turns verdicts into scored spans with their counts (:class:`RewardMetrics`) and stops the
run when the run's parse rate falls under ``parse_rate_floor``.

Reward hacking: the parsers only ever read the judge's own output (the critique continuation or the free text),
never the prompt, so a response that writes ``SCORE: 1.0`` cannot score itself. On top of that the response is
quoted: our delimiter tags inside it are defused, score claims are re-worded (``prompts.quote_untrusted``), and it is
tokenized with special-token recognition off (``prompts.encode_untrusted``), so a response containing
``<|im_end|><|im_start|>assistant`` cannot close its quote and speak as the judge.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, ClassVar, Sequence

from cdra_ray.algorithms.scores import parse_final_score, parse_step_score
from cdra_ray.engines.base import Completion, GenerationEngine, SamplingSettings
from cdra_ray.messages import Group, StepScore
from cdra_ray.rewards.base import RewardMetrics, RewardOutput, RewardParseError
from cdra_ray.rewards.cache import LRUCache, request_key
from cdra_ray.rewards.catalog import JudgeOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.prompts import encode_text, encode_untrusted

logger = logging.getLogger(__name__)

SCORE_MODES = ("constrained", "free")
SCORE_PASSES = ("streamed", "separate")
AGGREGATES = ("mean", "vote")

# A number in [-1, 1] with at most two decimals: -1, -0.35, 0, 0.7, 1.0 (an optional leading space lets the
# tokenizer use its usual " 0" tokens after "SCORE:").
SCORE_REGEX = r" ?-?(0(\.[0-9]{1,2})?|1(\.0{1,2})?)"


def clean_critique(text: str) -> str:
    """The critique as cut at the score keyword's stop string, minus the markup that led into it ("**", "#")."""
    return text.rstrip(" \t\r\n*#_`>[(:")


# ----------------------------------------------------------------------------------------------- score formats
@dataclass(frozen=True)
class ScoreFormat:
    """How a judge writes its score: the line prefix, the critique's stop strings, the constrained number, the
    parser over the judge's text, and the judge's scale, mapped linearly onto the reward scale [-1, 1]."""

    prefix: str  # the score line the judge ends with, e.g. "SCORE:"
    stops: tuple[str, ...]  # the critique phase stops at these (the judge never writes its own score line)
    regex: str  # what may follow the prefix in the constrained phase
    low: float  # the judge's scale
    high: float
    parse: Callable[[str], float | None]  # judge text -> value on [low, high], or None

    def to_reward(self, value: float) -> float:
        """[low, high] -> [-1, 1], linearly (the rubric's 0..100 becomes -1..1, 50 -> 0)."""
        if (self.low, self.high) == (-1.0, 1.0):
            return value  # already the reward scale (exactly: no round-off)
        return 2.0 * (value - self.low) / (self.high - self.low) - 1.0


STEP_SCALE = ScoreFormat(prefix="SCORE:", stops=("SCORE",), regex=SCORE_REGEX, low=-1.0, high=1.0,
                         parse=parse_step_score)
# An integer 0..100 (the paper's holistic score, App. E Fig. 13); an optional leading space as after "SCORE:".
FINAL_SCORE_REGEX = r" ?(100|[1-9]?[0-9])"
HUNDRED_SCALE = ScoreFormat(prefix="FINAL SCORE:", stops=("FINAL SCORE", "Final Score", "Final score"),
                            regex=FINAL_SCORE_REGEX, low=0.0, high=100.0, parse=parse_final_score)


# ----------------------------------------------------------------------------------------------- aggregation
def _round_half_up(value: float, decimals: int) -> float:
    """Rounding as people do it (0.35 -> 0.4, -0.35 -> -0.4) on the value's shortest decimal form."""
    step = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))


def aggregate_scores(values: Sequence[float], how: str, decimals: int = 1) -> float:
    """One score from the sample scores of a request.

    ``mean``: their arithmetic mean. ``vote``: the most frequent score after rounding to ``decimals`` places
    (half away from zero); a tie goes to the tied value nearest the mean of all samples, and if two are equally
    near, to the lower one (the conservative verdict).
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    if not values:
        raise ValueError("aggregate_scores needs at least one value")
    if how == "mean":
        return statistics.fmean(values)
    if decimals < 0:
        raise ValueError(f"vote decimals must be >= 0, got {decimals}")
    counts = Counter(_round_half_up(v, decimals) for v in values)
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    mean = statistics.fmean(values)
    return min(tied, key=lambda v: (abs(v - mean), v))


# ----------------------------------------------------------------------------------------------- the judge
@dataclass
class Verdict:
    """The judge's answer to one unique request (already on the reward scale)."""

    score: float
    critique: str
    parsed: bool
    route: str  # "constrained" | "free" | "default": how the request's score was read
    retried: bool = False
    raw: str = ""  # the last raw output looked at (error messages)
    sample_scores: list[float] = field(default_factory=list)  # every parsed sample, reward scale


class CritiqueScoreJudge:
    """Critique-then-score over any :class:`GenerationEngine`, ``samples`` critiques per request; see the module
    docstring for the phases. ``judge(prompts)`` returns one :class:`Verdict` per prompt and how each was served
    (``"cache"``, ``"duplicate"`` or ``"fresh"``)."""

    def __init__(
        self,
        engine: GenerationEngine,
        fmt: ScoreFormat,
        *,
        name: str,
        critique_max_tokens: int = _D.critique_max_tokens,
        temperature: float = _D.critique_temperature,
        score_mode: str = _D.score_mode,
        default_score: float = _D.default_score,
        samples: int = 1,
        aggregate: str = "mean",
        vote_decimals: int = 1,
        cache_size: int = _D.cache_size,
        score_max_tokens: int = 8,
        seed: int | None = None,
        score_pass: str = _D.score_pass,
    ) -> None:
        where = f"{name}:"
        if score_pass not in SCORE_PASSES:
            raise ValueError(f"{where} score_pass must be one of {SCORE_PASSES}, got {score_pass!r}")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"{where} score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"{where} aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if critique_max_tokens < 1:
            raise ValueError(f"{where} critique_max_tokens must be >= 1, got {critique_max_tokens}")
        if score_max_tokens < 4:
            raise ValueError(f"{where} score_max_tokens must be >= 4 (room for ' -0.35' / ' 100'), "
                             f"got {score_max_tokens}")
        if temperature < 0:
            raise ValueError(f"{where} temperature must be >= 0, got {temperature}")
        if samples < 1:
            raise ValueError(f"{where} samples must be >= 1, got {samples}")
        if vote_decimals < 0:
            raise ValueError(f"{where} vote_decimals must be >= 0, got {vote_decimals}")
        if not -1.0 <= default_score <= 1.0:
            raise ValueError(f"{where} default_score must lie in the reward range [-1, 1], got {default_score}")
        self.engine = engine
        self.fmt = fmt
        self.name = name
        self.critique_max_tokens = critique_max_tokens
        self.temperature = temperature
        self.score_mode = score_mode
        self.default_score = default_score
        self.samples = samples
        self.aggregate = aggregate
        self.vote_decimals = vote_decimals
        self.score_max_tokens = score_max_tokens
        self.seed = seed
        self.score_pass = score_pass
        self.cache: LRUCache[Verdict] = LRUCache(cache_size)
        self.settings_tag = (
            f"{name}|mode={score_mode}|cmax={critique_max_tokens}|temp={temperature}|k={samples}|agg={aggregate}"
            f"|dec={vote_decimals}|smax={score_max_tokens}|regex={fmt.regex}|seed={seed}"
        )
        self._warned_no_regex = False

    # ------------------------------------------------------------------ settings of each phase
    def _critique_settings(self) -> SamplingSettings:
        return SamplingSettings(n=self.samples, temperature=self.temperature, max_new_tokens=self.critique_max_tokens,
                                stop=self.fmt.stops, seed=self.seed)

    def _score_settings(self) -> SamplingSettings:
        return SamplingSettings(temperature=0.0, max_new_tokens=self.score_max_tokens, regex=self.fmt.regex)

    def _free_settings(self, n: int, temperature: float) -> SamplingSettings:
        # a whole free answer: the critique budget plus room for the score line
        return SamplingSettings(n=n, temperature=temperature,
                                max_new_tokens=self.critique_max_tokens + self.score_max_tokens + 4,
                                seed=self.seed if temperature > 0 else None)

    # ------------------------------------------------------------------ public API
    def judge(self, prompts: Sequence[list[int]]) -> tuple[list[Verdict], list[str]]:
        keys = [request_key(p, self.settings_tag) for p in prompts]
        served: list[str] = []
        known: dict[str, Verdict] = {}
        first_served: dict[str, str] = {}
        pending: list[int] = []  # index of the first prompt of each key to generate
        for i, key in enumerate(keys):
            if key in first_served:
                served.append("duplicate" if first_served[key] == "fresh" else "cache")
                continue
            cached = self.cache.get(key)
            if cached is not None:
                known[key] = cached
                first_served[key] = "cache"
            else:
                first_served[key] = "fresh"
                pending.append(i)
            served.append(first_served[key])
        fresh = self._generate([prompts[i] for i in pending])
        for i, verdict in zip(pending, fresh):
            known[keys[i]] = verdict
            if verdict.parsed:  # a default is not the judge's answer: ask again next time
                self.cache.put(keys[i], verdict)
        return [known[k] for k in keys], served

    # ------------------------------------------------------------------ generation
    def _call(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        outs = self.engine.generate(prompts, settings)
        if len(outs) != len(prompts) or any(len(o) != settings.n for o in outs):
            raise RuntimeError(
                f"{self.name}: engine returned {[len(o) for o in outs]} completions for {len(prompts)} prompts "
                f"with n={settings.n}"
            )
        return outs

    def _read(self, text: str) -> float | None:
        value = self.fmt.parse(text)
        return None if value is None else self.fmt.to_reward(value)

    def _generate(self, prompts: list[list[int]]) -> list[Verdict]:
        """Verdicts for unique prompts: at most one engine call per phase for the whole batch."""
        if not prompts:
            return []
        n = len(prompts)
        found: list[list[tuple[float, str]]] = [[] for _ in range(n)]  # parsed (score, critique) per request
        route = ["default"] * n
        raw = [""] * n
        if self.score_mode == "constrained":
            self._constrained(prompts, found, route, raw)
            todo = [i for i in range(n) if not found[i]]
            if todo:  # free-form fallback: a whole free generation per sample
                self._free(prompts, todo, self._free_settings(self.samples, self.temperature), found, route, raw)
        else:
            self._free(prompts, list(range(n)), self._free_settings(self.samples, self.temperature), found, route, raw)
        retried = [i for i in range(n) if not found[i]]
        if retried:  # one greedy retry of the whole answer
            self._free(prompts, retried, self._free_settings(1, 0.0), found, route, raw)
        was_retried = set(retried)

        verdicts = []
        for i in range(n):
            scores = [s for s, _ in found[i]]
            if not scores:
                verdicts.append(Verdict(score=self.default_score, critique=raw[i], parsed=False, route="default",
                                        retried=True, raw=raw[i]))
                continue
            if len(found[i]) == 1:
                critique = found[i][0][1]
            else:
                critique = "\n\n".join(f"[sample {k + 1}/{len(found[i])}, score {s:+.2f}] {c}"
                                       for k, (s, c) in enumerate(found[i]))
            verdicts.append(Verdict(
                score=aggregate_scores(scores, self.aggregate, self.vote_decimals), critique=critique, parsed=True,
                route=route[i], retried=i in was_retried, raw=raw[i], sample_scores=scores,
            ))
        return verdicts

    def _score_prompt(self, prompt: list[int], critique: str) -> list[int]:
        """Prompt + critique + the score prefix: the critique continues the prompt as text (a special-token string
        it may have echoed from the response stays text); then the score line is forced."""
        tokenizer = self.engine.tokenizer
        critique_ids = encode_untrusted(tokenizer, critique + "\n") if critique else []
        return prompt + critique_ids + encode_text(tokenizer, self.fmt.prefix)

    def _constrained(self, prompts, found, route, raw) -> None:
        continued = getattr(self.engine, "generate_continued", None)
        if self.score_pass == "streamed" and callable(continued):
            # each forced score starts as soon as its critique stops, beside the critiques still being written
            critiques, scores = continued(prompts, self._critique_settings(),
                                          lambda i, c: self._score_prompt(prompts[i], clean_critique(c.text)),
                                          self._score_settings())
            if len(critiques) != len(prompts) or any(len(c) != self.samples or len(s) != self.samples
                                                     for c, s in zip(critiques, scores)):
                raise RuntimeError(f"{self.name}: engine returned {[len(c) for c in critiques]} critiques for "
                                   f"{len(prompts)} prompts with n={self.samples}")
            owners = [i for i, cs in enumerate(critiques) for _ in cs]
            texts = [clean_critique(c.text) for cs in critiques for c in cs]
            scored = [s for ss in scores for s in ss]
        else:
            critiques = self._call(prompts, self._critique_settings())
            owners = [i for i, cs in enumerate(critiques) for _ in cs]
            texts = [clean_critique(c.text) for cs in critiques for c in cs]
            score_prompts = [self._score_prompt(prompts[i], text) for i, text in zip(owners, texts)]
            try:
                scored = [o[0] for o in self._call(score_prompts, self._score_settings())]
            except NotImplementedError as err:  # an engine that cannot constrain: the free-form route takes over
                if not self._warned_no_regex:
                    logger.warning("%s: engine %s has no regex-constrained decoding (%s); parsing free-form output",
                                   self.name, type(self.engine).__name__, err)
                    self._warned_no_regex = True
                scored = [None] * len(score_prompts)
        for i, text, c in zip(owners, texts, scored):
            c = c or Completion(text="", token_ids=[], logprobs=[], finish_reason="stop")
            raw[i] = text + "\n" + self.fmt.prefix + c.text
            value = self._read(self.fmt.prefix + " " + c.text.strip())
            if value is not None:
                found[i].append((value, text))
                route[i] = "constrained"

    def _free(self, prompts, todo: list[int], settings: SamplingSettings, found, route, raw) -> None:
        outs = self._call([prompts[i] for i in todo], settings)
        for i, completions in zip(todo, outs):
            for c in completions:
                raw[i] = c.text
                value = self._read(c.text)
                if value is not None:
                    found[i].append((value, c.text.strip()))
                    if route[i] == "default":
                        route[i] = "free"


# ----------------------------------------------------------------------------------------------- reward models
@dataclass(frozen=True)
class JudgeRequest:
    """One span of one response to be judged with the prompt ``prompt``."""

    group: int
    response: int
    span: tuple[int, int]
    prompt: list[int]


class JudgeRewardModel:
    """A :class:`~cdra_ray.rewards.base.RewardModel` whose spans are scored by a :class:`CritiqueScoreJudge`.

    Subclasses say which spans to judge with which prompts (:meth:`requests`); this class batches them through
    the judge, counts how each was served, and enforces the parse-rate floor on the run's totals."""

    needs_engine: ClassVar[bool] = True  # built with engine= (a GenerationEngine)
    title: ClassVar[str] = ""  # the name in error messages (default: the judge's name)

    def __init__(self, judge: CritiqueScoreJudge, *, parse_rate_floor: float = _D.parse_rate_floor,
                 min_requests_for_floor: int = _D.min_requests_for_floor) -> None:
        if not 0.0 <= parse_rate_floor <= 1.0:
            raise ValueError(f"{judge.name}: parse_rate_floor must lie in [0, 1], got {parse_rate_floor}")
        if min_requests_for_floor < 1:
            raise ValueError(f"{judge.name}: min_requests_for_floor must be >= 1, got {min_requests_for_floor}")
        self.judge = judge
        self.parse_rate_floor = parse_rate_floor
        self.min_requests_for_floor = min_requests_for_floor
        self.metrics = RewardMetrics()  # run totals (the floor is checked on these)

    @property
    def engine(self) -> GenerationEngine:
        return self.judge.engine

    @property
    def score_mode(self) -> str:
        return self.judge.score_mode

    def requests(self, groups: Sequence[Group]) -> list[JudgeRequest]:
        raise NotImplementedError  # each variant defines its spans and prompts

    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        """Every requested span of every group judged in one batch of engine calls (one per phase)."""
        requests = self.requests(groups)
        verdicts, served = self.judge.judge([r.prompt for r in requests])
        metrics = [RewardMetrics() for _ in groups]
        outputs = [RewardOutput(step_scores=[[] for _ in g.samples], metrics=m) for g, m in zip(groups, metrics)]
        for req, verdict, how in zip(requests, verdicts, served):
            count_verdict(metrics[req.group], verdict, how)
            outputs[req.group].step_scores[req.response].append(StepScore(
                start=req.span[0], end=req.span[1], score=verdict.score, critique=verdict.critique,
                parsed=verdict.parsed))
        self.metrics = self.metrics.merge(RewardMetrics.total(metrics))
        self._check_parse_rate(outputs)
        return outputs

    def _check_parse_rate(self, outputs: list[RewardOutput]) -> None:
        m = self.metrics
        if m.generated < self.min_requests_for_floor or m.parse_rate >= self.parse_rate_floor:
            return
        j = self.judge
        raise RewardParseError(
            f"{self.title or j.name} parse rate {m.parse_rate:.1%} is below parse_rate_floor "
            f"{self.parse_rate_floor:.1%}: of {m.generated} generated scoring requests, {m.parsed_constrained} were "
            f"parsed from the constrained score, {m.parsed_free} from free text, {m.retried} needed a retry and "
            f"{m.defaulted} got the default score {j.default_score} (score_mode={j.score_mode!r}). Example unparsed "
            f"output: {m.example_unparsed!r}. Use score_mode='constrained' with an engine that supports regex "
            f"constraints, give critiques more room (critique_max_tokens), or lower parse_rate_floor.",
            outputs,
        )


def count_verdict(m: RewardMetrics, verdict: Verdict, how: str) -> None:
    """Add one request to ``m``: served from the cache, as a duplicate, or freshly generated (and how parsed)."""
    m.requests += 1
    if how == "cache":
        m.cache_hits += 1
    elif how == "duplicate":
        m.deduplicated += 1
    else:
        if verdict.route == "constrained":
            m.parsed_constrained += 1
        elif verdict.route == "free":
            m.parsed_free += 1
        else:
            m.defaulted += 1
            m.example_unparsed = m.example_unparsed or verdict.raw[-400:]
        m.retried += int(verdict.retried)
