"""Names and options of the reward kinds (``reward.kind``), torch-free; each implementation loads on first use.

An options class lists what its kind is built with; :mod:`cdra_ray.config.resolve` fills it from the config (each
field from the ``reward`` key of the same name unless ``CONFIG_KEYS`` names another source) and from
``reward.options``. ``needs_engine`` says whether the kind is built with a generation engine (judges) or with
the model directory (classification heads, rules). A new kind registers itself with
:func:`register_reward_model`; no other file needs to know it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from cdra_ray.registry import Registry, check_choice, check_number, options_from_signature

REWARDS = Registry("reward.kind", "reward kind")

SCORE_MODES = ("constrained", "free")
SCORE_PASSES = ("streamed", "separate")
TTS_AGGREGATES = ("mean", "vote")
SCORE_TRANSFORMS = ("identity", "tanh")
DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: engines.catalog.host_dtype, where the model loads


def _threads(config) -> int:
    from cdra_ray.actors.environment import threads_for

    return threads_for(config.reward.num_cpus)


@dataclass(frozen=True)
class _JudgeCommon:
    """What every generative judge is built with (critique, forced score, retry, default, parse-rate floor)."""

    critique_max_tokens: int = 96
    score_mode: str = "constrained"  # constrained (score line forced by a regex) | free (parse free text)
    default_score: float = 0.0  # used, and counted, when no score can be read at all
    parse_rate_floor: float = 0.95  # stop the run when fewer scores than this are read from the model
    min_requests_for_floor: int = 20
    cache_size: int = 100_000
    # constrained mode: "streamed" starts each forced score line as soon as its critique stops, in the same engine
    # loop (engines with generate_continued: vLLM); "separate" runs all score lines as a second pass afterwards
    score_pass: str = "streamed"

    def __post_init__(self):
        check_number("critique_max_tokens", self.critique_max_tokens, low=1, integer=True)
        check_choice("score_mode", self.score_mode, SCORE_MODES)
        check_choice("score_pass", self.score_pass, SCORE_PASSES)
        check_number("default_score", self.default_score, low=-1.0, high=1.0)
        check_number("parse_rate_floor", self.parse_rate_floor, low=0.0, high=1.0)
        check_number("min_requests_for_floor", self.min_requests_for_floor, low=1, integer=True)
        check_number("cache_size", self.cache_size, low=0, integer=True)


@dataclass(frozen=True)
class JudgeOptions(_JudgeCommon):
    """``genrm`` and ``rubric_rm``: one greedy (or tempered) critique per response."""

    critique_temperature: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_number("critique_temperature", self.critique_temperature, low=0.0)


def _check_max_steps(max_steps) -> None:
    if max_steps is not None:
        check_number("max_steps", max_steps, low=1, integer=True)


@dataclass(frozen=True)
class PersGenPRMOptions(JudgeOptions):
    max_steps: Optional[int] = None  # score only the first N steps (the policy's rollout.max_steps)
    CONFIG_KEYS: ClassVar[dict] = {"max_steps": "rollout.max_steps"}

    def __post_init__(self):
        super().__post_init__()
        _check_max_steps(self.max_steps)


@dataclass(frozen=True)
class TTSOptions(_JudgeCommon):
    """``tts``: k sampled critiques per response, aggregated."""

    samples: int = 4
    temperature: float = 0.7
    aggregate: str = "mean"  # mean | vote (majority of scores rounded to vote_decimals)
    vote_decimals: int = 1
    CONFIG_KEYS: ClassVar[dict] = {"samples": "reward.tts_samples", "temperature": "reward.tts_temperature",
                                   "aggregate": "reward.tts_aggregate", "vote_decimals": "reward.tts_vote_decimals"}

    def __post_init__(self):
        super().__post_init__()
        check_number("tts_samples", self.samples, low=1, integer=True)
        check_number("tts_temperature", self.temperature, low=0.0)
        check_choice("tts_aggregate", self.aggregate, TTS_AGGREGATES)
        check_number("tts_vote_decimals", self.vote_decimals, low=0, integer=True)
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"tts_temperature must be > 0 when tts_samples > 1 (k greedy critiques are "
                             f"identical), got {self.temperature}")


@dataclass(frozen=True)
class HeadOptions:
    """Classification-head reward models: their own model, scored in batches."""

    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 8
    max_length: int = 4096
    allow_untrained_head: bool = False  # refuse a directory whose reward head was never trained
    num_threads: Optional[int] = None
    CONFIG_KEYS: ClassVar[dict] = {"dtype": ("reward.dtype", "model.dtype"), "device": "learner.device",
                                   "max_length": "reward.max_model_len", "num_threads": _threads}

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("max_model_len", self.max_length, low=2, integer=True)


@dataclass(frozen=True)
class ScalarRMOptions(HeadOptions):
    score_transform: str = "identity"  # identity | tanh (squash an unbounded score into [-1, 1])

    def __post_init__(self):
        super().__post_init__()
        check_choice("score_transform", self.score_transform, SCORE_TRANSFORMS)


@dataclass(frozen=True)
class PRMOptions(HeadOptions):
    max_steps: Optional[int] = None
    CONFIG_KEYS: ClassVar[dict] = {**HeadOptions.CONFIG_KEYS, "max_steps": "rollout.max_steps"}

    def __post_init__(self):
        super().__post_init__()
        _check_max_steps(self.max_steps)


@dataclass(frozen=True)
class RuleOptions:
    target_chars: str = string.ascii_lowercase  # a step scores the share of its characters in this set

    def __post_init__(self):
        if not isinstance(self.target_chars, str) or not self.target_chars:
            raise ValueError(f"target_chars must be a non-empty string, got {self.target_chars!r}")


REWARDS.register("pers_genprm", PersGenPRMOptions, "cdra_ray.rewards.pers_genprm:PersGenPRM", needs_engine=True)
REWARDS.register("genrm", JudgeOptions, "cdra_ray.rewards.genrm:GenRM", needs_engine=True)
REWARDS.register("rubric_rm", JudgeOptions, "cdra_ray.rewards.rubric_rm:RubricRM", needs_engine=True)
REWARDS.register("tts", TTSOptions, "cdra_ray.rewards.tts:TTSGenRM", needs_engine=True)
REWARDS.register("scalar_rm", ScalarRMOptions, "cdra_ray.rewards.scalar_rm:ScalarRM", needs_engine=False)
REWARDS.register("prm", PRMOptions, "cdra_ray.rewards.prm:PRM", needs_engine=False)
REWARDS.register("rule", RuleOptions, "cdra_ray.rewards.rule:RuleReward", needs_engine=False)


def register_reward_model(name: str, options: type | None = None, *, needs_engine: bool | None = None):
    """Class decorator adding a reward kind. ``options`` defaults to the kind's catalog entry (built-in kinds) or
    to a dataclass of the constructor's keyword-only parameters; ``needs_engine`` to the class's attribute
    ``needs_engine`` (default True: built with ``engine=``, else with ``model_dir=``)."""

    def decorate(cls: type) -> type:
        known = REWARDS.entry(name) if name in REWARDS else None
        opts = options or (known.options if known else options_from_signature(cls, exclude=("engine",
                                                                                                "model_dir")))
        if needs_engine is not None:
            engine = needs_engine
        else:
            engine = known.traits["needs_engine"] if known else getattr(cls, "needs_engine", True)
        REWARDS.register(name, opts, cls, needs_engine=engine)
        return cls

    return decorate


def create_reward_model(kind: str, **kwargs: Any):
    """Build the reward kind ``kind`` with constructor keywords (runtime objects and options alike)."""
    return REWARDS.load(kind)(**kwargs)
