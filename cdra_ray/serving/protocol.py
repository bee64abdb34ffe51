"""The wire formats of the served reward model, as pure functions over bytes, dicts and strings.

Two request shapes become the same thing, a list of :class:`ScoreRecord` (preference P, query q, response):

- OpenRLHF's remote reward protocol, ``POST /get_reward`` with ``{"query": [prompt + response, ...],
  "prompts": [prompt, ...], "labels": [...] (optional)}``: the shape OpenRLHF's ``SingleTurnAgentExecutor``
  posts. Its reply is read for ``rewards`` (one float per response), and ``scores``/``extra_logs`` when
  present. The request carries no preference, so P comes from an optional ``preferences`` list, or else from
  the prompt text through ``serve.preference_template`` (a regex with a named group ``preference`` and an
  optional ``query``; without a ``query`` group the whole prompt is the question). The response is the query
  text after its prompt, minus trailing end-of-sequence markers.
- The native ``POST /v1/score_steps``: ``{"records": [{"preference", "query", "response"}, ...]}``.

Every malformed request raises :class:`BadRequest` naming the field (``query[2]``, ``prompts``, ``body``) and the
HTTP status (400, or 413 for bodies and batches over the configured limits).

Unparsed steps: a step whose judge output held no readable score is ``"unparsed"`` in ``parse_outcomes``;
with ``unparsed="null"`` its score is ``null`` and it is left out of the response's reward (a response with no
parsed step has reward ``null``, which TRL turns into NaN and ignores); with ``unparsed="default"`` it keeps the
reward model's configured default score, still flagged. Never a silent 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from cdra_ray.messages import StepScore


@dataclass(frozen=True)
class ScoreRecord:
    """One response to score, with the preference and question it answers."""

    preference: str
    query: str
    response: str


class BadRequest(ValueError):
    """A request the service refuses: ``status`` (4xx), the ``field`` at fault, and why."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"detail": f"{self.field}: {self.message}", "field": self.field}


# ------------------------------------------------------------------------------------------------ body
def decode_json_body(raw: bytes, max_body_bytes: int) -> dict:
    """The request body as a JSON object: 413 over the size limit, 400 for non-UTF-8, non-JSON or non-object."""
    if len(raw) > max_body_bytes:
        raise BadRequest("body", f"{len(raw)} bytes is over serve.max_body_bytes={max_body_bytes}", 413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest("body", f"not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
    try:
        body = json.loads(text)
    except ValueError as err:
        raise BadRequest("body", f"not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest("body", f"must be a JSON object, got {type(body).__name__}")
    return body


def _string_list(body: dict, field: str, *, required: bool = True) -> list[str] | None:
    if field not in body or body[field] is None:
        if required:
            raise BadRequest(field, "missing (a list of strings)")
        return None
    value = body[field]
    if not isinstance(value, list):
        raise BadRequest(field, f"must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f"{field}[{i}]", f"must be a string, got {type(item).__name__}")
    return value


def _check_count(field: str, n: int, max_records: int) -> None:
    if n == 0:
        raise BadRequest(field, "is empty: send at least one response to score")
    if n > max_records:
        raise BadRequest(field, f"{n} responses is over serve.max_records={max_records}: split the request", 413)


# ------------------------------------------------------------------------------------------------ OpenRLHF
def split_response(query: str, prompt: str, strip_suffixes: Sequence[str] = ()) -> str | None:
    """The response part of ``query`` (= prompt + response), end markers removed; None if the prompt is absent."""
    if query.startswith(prompt):
        response = query[len(prompt):]
    else:  # a tokenizer round trip may prepend a BOS or differ in leading whitespace
        at = query.find(prompt) if prompt else -1
        if at < 0:
            return None
        response = query[at + len(prompt):]
    suffixes = [s for s in strip_suffixes if s]
    stripped = True
    while stripped:
        stripped = False
        response = response.rstrip()
        for suffix in suffixes:
            if response.endswith(suffix):
                response = response[: -len(suffix)]
                stripped = True
    return response


def recover_preference(prompt: str, template: re.Pattern) -> tuple[str, str] | None:
    """(P, q) read from a prompt by ``template``; q is the whole prompt when the template has no query group."""
    match = template.search(prompt)
    if match is None or not (match.group("preference") or "").strip():
        return None
    query = match.group("query") if "query" in template.groupindex else None
    return match.group("preference").strip(), (query.strip() if query else prompt)


def parse_get_reward(body: dict, template: re.Pattern, *, max_records: int,
                     strip_suffixes: Sequence[str] = ()) -> list[ScoreRecord]:
    """Records of an OpenRLHF ``/get_reward`` body (see the module docstring)."""
    queries = _string_list(body, "query")
    _check_count("query", len(queries), max_records)
    prompts = _string_list(body, "prompts")
    if len(prompts) != len(queries):
        raise BadRequest("prompts", f"has {len(prompts)} entries but query has {len(queries)}")
    labels = body.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(queries)):
        got = f"{len(labels)} entries" if isinstance(labels, list) else f"a {type(labels).__name__}"
        raise BadRequest("labels", f"must be a list with one entry per query ({len(queries)}), got {got}")
    preferences = _string_list(body, "preferences", required=False)
    if preferences is not None and len(preferences) != len(queries):
        raise BadRequest("preferences", f"has {len(preferences)} entries but query has {len(queries)}")

    records = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        response = split_response(query, prompt, strip_suffixes)
        if response is None:
            raise BadRequest(f"query[{i}]", f"does not contain its prompt (prompts[{i}]); query must be the prompt "
                                            "followed by the response")
        recovered = recover_preference(prompt, template)
        if preferences is not None:
            if not preferences[i].strip():
                raise BadRequest(f"preferences[{i}]", "is empty")
            preference, question = preferences[i], (recovered[1] if recovered else prompt)
        elif recovered is None:
            raise BadRequest(f"prompts[{i}]", "no preference found by serve.preference_template; send a "
                                              "'preferences' list or configure the template")
        else:
            preference, question = recovered
        records.append(ScoreRecord(preference=preference, query=question, response=response))
    return records


# ------------------------------------------------------------------------------------------------ native
def parse_score_steps(body: dict, *, max_records: int) -> list[ScoreRecord]:
    """Records of a native ``/v1/score_steps`` body: ``{"records": [{"preference", "query", "response"}]}``."""
    if "records" not in body:
        raise BadRequest("records", "missing (a list of {preference, query, response} objects)")
    items = body["records"]
    if not isinstance(items, list):
        raise BadRequest("records", f"must be a list, got {type(items).__name__}")
    _check_count("records", len(items), max_records)
    records = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"records[{i}]", f"must be an object, got {type(item).__name__}")
        values = {}
        for key in ("preference", "query", "response"):
            if not isinstance(item.get(key), str):
                what = "missing" if key not in item else f"must be a string, got {type(item[key]).__name__}"
                raise BadRequest(f"records[{i}].{key}", what)
            values[key] = item[key]
        for key in ("preference", "query"):
            if not values[key].strip():
                raise BadRequest(f"records[{i}].{key}", "is empty")
        records.append(ScoreRecord(**values))
    return records


# ------------------------------------------------------------------------------------------------ replies
@dataclass
class RecordResult:
    """The verdict on one response: per step its span, score (None = unparsed under ``unparsed="null"``),
    critique and parse outcome, and the aggregated reward."""

    spans: list[tuple[int, int]]
    scores: list[float | None]
    critiques: list[str]
    outcomes: list[str]  # "parsed" | "unparsed"
    reward: float | None


def aggregate_scores(scores: Sequence[float | None], how: str) -> float | None:
    """Mean or sum of the step scores that are not None; None when there are none."""
    values = [s for s in scores if s is not None]
    if not values:
        return None
    total = math.fsum(values)
    if how == "sum":
        return total
    if how == "mean":
        return total / len(values)
    raise ValueError(f"aggregate must be 'mean' or 'sum', got {how!r}")


def record_result(step_scores: Sequence[StepScore], *, aggregate: str, unparsed: str) -> RecordResult:
    """One response's :class:`RecordResult` from the reward model's scored spans."""
    if unparsed not in ("null", "default"):
        raise ValueError(f"unparsed must be 'null' or 'default', got {unparsed!r}")
    scores = [s.score if s.parsed or unparsed == "default" else None for s in step_scores]
    return RecordResult(
        spans=[(s.start, s.end) for s in step_scores],
        scores=scores,
        critiques=[s.critique for s in step_scores],
        outcomes=["parsed" if s.parsed else "unparsed" for s in step_scores],
        reward=aggregate_scores(scores, aggregate),
    )


def _counts(results: Sequence[RecordResult]) -> dict[str, Any]:
    steps = sum(len(r.outcomes) for r in results)
    unparsed = sum(o == "unparsed" for r in results for o in r.outcomes)
    return {"responses": len(results), "steps": steps, "unparsed_steps": unparsed,
            "parse_rate": (steps - unparsed) / steps if steps else None}


def get_reward_reply(results: Sequence[RecordResult], **extra: Any) -> dict[str, Any]:
    """The ``/get_reward`` reply: OpenRLHF reads ``rewards`` (and ``scores``, ``extra_logs`` when present)."""
    rewards = [r.reward for r in results]
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {  # one number per response, logged by OpenRLHF
            "prm_steps": [len(r.outcomes) for r in results],
            "prm_unparsed_steps": [sum(o == "unparsed" for o in r.outcomes) for r in results],
        },
        "step_rewards": [r.scores for r in results],
        "critiques": [r.critiques for r in results],
        "parse_outcomes": [r.outcomes for r in results],
        "counts": _counts(results),
        **extra,
    }


def score_steps_reply(records: Sequence[ScoreRecord], results: Sequence[RecordResult],
                      **extra: Any) -> dict[str, Any]:
    """The ``/v1/score_steps`` reply: per record its reward and every step's span, text, score and critique."""
    out = []
    for record, result in zip(records, results):
        steps = [
            {"start": start, "end": end, "text": record.response[start:end], "score": score, "critique": critique,
             "parse_outcome": outcome}
            for (start, end), score, critique, outcome in zip(result.spans, result.scores, result.critiques,
                                                               result.outcomes)
        ]
        out.append({"reward": result.reward, "steps": steps})
    return {"results": out, "counts": _counts(results), **extra}
