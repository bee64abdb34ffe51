"""The prompts of the evaluated methods (paper App. C): zero-shot, few-shot, CoT, and a trained policy.

- ``zero_shot``: the user's preference and question, no instructions about format, no examples.
- ``few_shot``: the same, after ``k`` demonstrations (user turn + assistant answer) drawn with a fixed seed from
  a demonstration file whose scenarios are never the evaluated ones (checked by id and by text:
  :func:`check_demos_disjoint`).
- ``cot``: the policy's step-by-step inference format (:func:`cdra_ray.data.prompts.inference_messages`): analyse
  the stated preference, infer unstated ones, then answer, as "Step k:" lines.
- ``policy``: a trained checkpoint, prompted exactly as it was trained (the same inference format).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cdra_ray.data.prompts import SYSTEM_PROMPT, inference_messages
from cdra_ray.data.scenarios import ScenarioDataError, load_scenarios, resolve_data_path
from cdra_ray.messages import Scenario

BUILTIN_DEMOS = Path(__file__).resolve().parent / "eval_demos.jsonl"


@dataclass(frozen=True)
class Demo:
    uid: str
    preference: str
    query: str
    response: str


def plain_user_turn(preference: str, query: str) -> str:
    return f"User preference: {preference}\nQuestion: {query}"


def load_demos(path: str) -> list[Demo]:
    """Demonstrations ``{id, preference, query, response}`` (a construct ``d_rft.jsonl`` has these fields);
    every line is checked by the scenario loader first, so errors name the file and line."""
    resolved = BUILTIN_DEMOS if path == "builtin:eval_demos" else resolve_data_path(path)
    scenarios = load_scenarios(resolved)
    demos = []
    for line_no, line in enumerate(resolved.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        response = record.get("response")
        if not isinstance(response, str) or not response.strip():
            raise ScenarioDataError(f"{resolved}:{line_no}: a demonstration needs a non-empty string 'response'")
        scenario = scenarios[len(demos)]
        demos.append(Demo(scenario.uid, scenario.preference, scenario.query, response.strip()))
    return demos


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def check_demos_disjoint(demos: Sequence[Demo], evaluated: Sequence[Scenario], source: str) -> None:
    """Refuse demonstrations that are evaluated scenarios (same id, or same preference and question)."""
    ids = {s.uid for s in evaluated}
    texts = {(_norm(s.preference), _norm(s.query)) for s in evaluated}
    clash = [d.uid for d in demos if d.uid in ids or (_norm(d.preference), _norm(d.query)) in texts]
    if clash:
        raise ScenarioDataError(
            f"evaluate.demo_data={source!r}: demonstrations {clash[:5]} are also evaluated scenarios; few-shot "
            "demonstrations must come from a split that is never evaluated (e.g. the training split)")


def pick_demos(demos: Sequence[Demo], k: int, seed: int, scenario_uid: str) -> list[Demo]:
    """``k`` demonstrations for one scenario: a seeded draw that depends on (seed, scenario id) only."""
    if k > len(demos):
        raise ScenarioDataError(f"evaluate.few_shot_k={k}: only {len(demos)} demonstrations available")
    return random.Random(f"{seed}/{scenario_uid}").sample(list(demos), k)


def method_messages(kind: str, scenario: Scenario, demos: Sequence[Demo] = ()) -> list[dict[str, str]]:
    """Chat messages of one evaluated method for one scenario."""
    if kind in ("cot", "policy"):
        return inference_messages(scenario)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if kind == "few_shot":
        if not demos:
            raise ValueError("few_shot needs demonstrations")
        for d in demos:
            messages += [{"role": "user", "content": plain_user_turn(d.preference, d.query)},
                         {"role": "assistant", "content": d.response}]
    elif kind != "zero_shot":
        raise ValueError(f"unknown method kind {kind!r}")
    messages.append({"role": "user", "content": plain_user_turn(scenario.preference, scenario.query)})
    return messages
