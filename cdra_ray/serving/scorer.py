"""Score :class:`~cdra_ray.serving.protocol.ScoreRecord` lists with the training run's reward service.

The plain class behind the HTTP deployment (testable without Ray or HTTP): each record becomes a one-response
:class:`~cdra_ray.messages.Group`, so the served judge uses the same prompts, step segmentation, batching across
groups, cache and constrained score line as the reward service of a training run. Several requests' records go
to the model in one call (:meth:`RecordScorer.score_batches`, what Serve's request batching calls).

One departure from training: the model is built with ``parse_rate_floor=0``. A training run stops when its
judge's parse rate falls under the floor; a shared service instead reports every unparsed step (per response in
``parse_outcomes``, cumulatively in :meth:`RecordScorer.metrics`) and lets each caller decide.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from cdra_ray.actors.reward_service import RewardService
from cdra_ray.messages import Group, Sample, Scenario
from cdra_ray.serving.protocol import RecordResult, ScoreRecord, record_result


def record_groups(records: Sequence[ScoreRecord]) -> list[Group]:
    """One single-response group per record (no token ids: the reward models read text only)."""
    return [
        Group(scenario=Scenario(uid=f"record-{i}", preference=r.preference, query=r.query, index=i),
              prompt_token_ids=[], samples=[Sample(response_text=r.response, response_token_ids=[],
                                                   sampling_logprobs=[])],
              policy_version=0)
        for i, r in enumerate(records)
    ]


class RecordScorer:
    def __init__(self, service: RewardService, *, aggregate: str = "mean", unparsed: str = "null"):
        self.service = service
        self.aggregate = aggregate
        self.unparsed = unparsed
        self.batch_sizes: list[int] = []  # records per model call, for metrics and tests
        self.seconds = 0.0  # time spent in model calls

    def score(self, records: Sequence[ScoreRecord]) -> list[RecordResult]:
        return self.score_batches([records])[0]

    def score_batches(self, batches: Sequence[Sequence[ScoreRecord]]) -> list[list[RecordResult]]:
        """Every record of every batch in one model call; results split back per batch, in order."""
        flat = [record for batch in batches for record in batch]
        if not flat:
            return [[] for _ in batches]
        start = time.perf_counter()
        groups = self.service.score_groups(record_groups(flat))
        self.seconds += time.perf_counter() - start
        self.batch_sizes.append(len(flat))
        results = [record_result(g.step_scores[0], aggregate=self.aggregate, unparsed=self.unparsed) for g in groups]
        out, at = [], 0
        for batch in batches:
            out.append(results[at: at + len(batch)])
            at += len(batch)
        return out

    def metrics(self) -> dict[str, float]:
        """Cumulative counts of the reward model (parse routes, cache, defaults) and of the model calls."""
        out = self.service.totals.to_log_dict("reward/")
        out["serve/model_calls"] = float(len(self.batch_sizes))
        out["serve/records"] = float(sum(self.batch_sizes))
        out["serve/model_seconds"] = self.seconds
        return out


def build_scorer(config, reward_dir: str) -> RecordScorer:
    """The configured reward model (``reward`` section) in a :class:`RecordScorer` (``serve`` section)."""
    from cdra_ray.actors.constructors import reward_engine_spec, reward_model
    from cdra_ray.actors.environment import apply_granted_threads

    entry, options = reward_model(config)
    if any(f.name == "parse_rate_floor" for f in dataclasses.fields(options)):
        options = dataclasses.replace(options, parse_rate_floor=0.0)  # reported instead (module docstring)
    spec = reward_engine_spec(config, reward_dir)
    if entry.traits.get("needs_engine", True):  # judges generate text through an engine
        model = entry.create(options, engine=spec.build(apply_granted_threads(spec.num_threads, "reward-serve")))
    else:  # classification heads and rules load what they need from the model directory
        model = entry.create(options, model_dir=spec.model_dir)
    return RecordScorer(RewardService(model), aggregate=config.serve.aggregate, unparsed=config.serve.unparsed)
