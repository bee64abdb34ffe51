"""The CDPA control loop: stream groups through rollout -> reward -> reference -> learner.

Each scenario becomes a chain of Ray calls (``generate_group`` -> ``score_group`` -> ``annotate_group``)
whose arguments are the previous call's ObjectRefs, so a group moves to the next stage the moment it is
ready, independently of the others: no lock-step batches. The driver only keeps the pipeline full, collects
finished groups in arrival order, and when B fresh ones are ready runs one update:

    train on B groups  ->  bump policy version  ->  publish weights  ->  log  ->  (checkpoint)

``max_staleness`` (see :mod:`cdra_ray.driver.schedule`) bounds how far the rollouts may run ahead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdra_ray.config.schema import Config
from cdra_ray.driver.checkpointing import DriverState, save_checkpoint
from cdra_ray.driver.metrics import MetricsWriter
from cdra_ray.driver.schedule import GroupBuffer
from cdra_ray.driver.timers import PhaseTimer
from cdra_ray.data.scenarios import ScenarioOrder
from cdra_ray.messages import Group, Scenario

log = logging.getLogger(__name__)


@dataclass
class Actors:
    """Handles of the Ray actors of one run (built by :func:`cdra_ray.actors.wiring.start_actors`)."""

    rollout_workers: list[Any]
    reward: Any
    reference: Any
    learner: Any
    weight_publisher: Any  # .publish(policy_version, wait): object store (CPU/GPU) or NCCL broadcast (GPU)


def group_metrics(groups: list[Group]) -> dict[str, float]:
    """Reward and length statistics of the groups of one update."""
    step_scores = [s.score for g in groups for scores in g.step_scores for s in scores]
    response_sums = [sum(s.score for s in scores) for g in groups for scores in g.step_scores]
    steps_per_response = [len(spans) for g in groups for spans in g.step_spans]
    lengths = [len(s.response_token_ids) for g in groups for s in g.samples]
    truncated = [s.finish_reason == "length" for g in groups for s in g.samples]
    return {
        "reward/step_mean": statistics.fmean(step_scores),
        "reward/step_std": statistics.pstdev(step_scores),
        "reward/response_sum_mean": statistics.fmean(response_sums),
        "reward/defaulted_steps": sum(not s.parsed for g in groups for scores in g.step_scores for s in scores),
        "response/steps_mean": statistics.fmean(steps_per_response),
        "response/tokens_mean": statistics.fmean(lengths),
        "response/truncated_rate": sum(truncated) / len(truncated),
        "tokens/generated": float(sum(lengths)),
        "groups/policy_lag_max": 0.0,
    }


def namespaced_learner_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Learner metrics under ``learner/``, except advantage statistics under ``advantage/`` (a headline)."""
    out = {}
    for key, value in metrics.items():
        if key == "zero_advantage_rate":
            out["advantage/zero_rate"] = value
        elif key.startswith("advantage_"):
            out["advantage/" + key.removeprefix("advantage_")] = value
        else:
            out["learner/" + key] = value
    return out


class CDPADriver:
    def __init__(self, config: Config, run_dir: Path, scenarios: list[Scenario], actors: Actors,
                 state: DriverState | None = None):
        import ray  # the driver is the one place that schedules Ray work

        self._ray = ray
        self.config = config
        self.run_dir = Path(run_dir)
        self.scenarios = scenarios
        self.actors = actors
        self.state = state or DriverState()
        self.order = ScenarioOrder(scenarios, seed=config.data.seed, shuffle=config.data.shuffle,
                                   consumed=self.state.consumed)
        self.buffer = GroupBuffer(config.train.groups_per_update, config.train.max_staleness)
        self.buffer.dropped_stale = self.state.dropped_stale
        self.timer = PhaseTimer()
        self.in_flight: dict[Any, Scenario] = {}
        self._to_relaunch = [scenarios[i] for i in self.state.pending]  # resumed: in flight at the checkpoint
        self._next_worker = 0
        self.history: list[dict] = []

    # -- pipeline --------------------------------------------------------------------------------------
    def _next_scenario(self) -> Scenario:
        if self._to_relaunch:
            return self._to_relaunch.pop(0)
        return self.order.next()

    def _launch(self, scenario: Scenario) -> None:
        worker = self.actors.rollout_workers[self._next_worker % len(self.actors.rollout_workers)]
        self._next_worker += 1
        ref = worker.generate_group.remote(scenario)
        ref = self.actors.reward.score_group.remote(ref)
        ref = self.actors.reference.annotate_group.remote(ref)
        self.in_flight[ref] = scenario

    def _fill_pipeline(self) -> None:
        while len(self.in_flight) + len(self.buffer) < self.buffer.max_in_flight:
            self._launch(self._next_scenario())

    def _collect(self) -> None:
        """Block until at least one group is through the pipeline; take every other finished one too."""
        with self.timer.phase("wait"):
            done, _ = self._ray.wait(list(self.in_flight), num_returns=1)
            more, _ = self._ray.wait([r for r in self.in_flight if r not in done],
                                     num_returns=len(self.in_flight) - len(done), timeout=0)
        for ref in list(done) + list(more):
            self.in_flight.pop(ref)
            self.buffer.add(self._ray.get(ref))

    # -- one update ------------------------------------------------------------------------------------
    def _learn(self, batch: list[Group]) -> dict:
        ray = self._ray
        version_before = self.state.policy_version
        with self.timer.phase("learn"):
            learner_metrics = ray.get(self.actors.learner.train_on_groups.remote(batch))
        self.state.policy_version += 1
        with self.timer.phase("weight_sync"):
            # synchronous runs wait: the next groups must be sampled by the new weights
            self.actors.weight_publisher.publish(self.state.policy_version, wait=self.config.train.max_staleness == 0)
        for group in batch:
            for phase, seconds in group.timings.items():
                self.timer.add(phase, seconds)
        metrics = {**group_metrics(batch), **namespaced_learner_metrics(learner_metrics)}
        metrics["groups/policy_lag_max"] = float(max(version_before - g.policy_version for g in batch))
        metrics["groups/dropped_stale_total"] = float(self.buffer.dropped_stale)
        metrics.update(ray.get(self.actors.reward.metrics.remote()))
        metrics.update(self.timer.pop())
        metrics["trained_uids"] = [g.scenario.uid for g in batch]
        self.state.trained_uids.extend(metrics["trained_uids"])
        return metrics

    def _checkpoint(self) -> Path:
        ray = self._ray
        pending = [g.scenario.index for g in self.buffer.pending()] + [s.index for s in self.in_flight.values()]
        state = dataclasses.replace(self.state, consumed=self.order.consumed, pending=pending,
                                    dropped_stale=self.buffer.dropped_stale)

        def write_learner(policy_dir: Path, state_dir: Path) -> None:
            ray.get(self.actors.learner.save_checkpoint.remote(str(policy_dir)))
            ray.get(self.actors.learner.save_state.remote(str(state_dir)))

        with self.timer.phase("checkpoint"):
            return save_checkpoint(self.run_dir, self.state.policy_version, state, write_learner)

    def run(self, progress: bool = True) -> dict:
        total = self.config.train.total_updates
        save_every = self.config.train.save_every
        writer = MetricsWriter(self.run_dir, tensorboard=self.config.run.tensorboard)
        bar = _progress_bar(progress, total, initial=self.state.policy_version)
        try:
            while self.state.policy_version < total:
                self._fill_pipeline()
                self._collect()
                batch = self.buffer.pop_batch(self.state.policy_version)
                if batch is None:
                    continue
                metrics = self._learn(batch)
                writer.write(self.state.policy_version, metrics)
                self.history.append(metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/step_mean']:+.3f}",
                                    zero_adv=f"{metrics.get('advantage/zero_rate', float('nan')):.2f}")
                if (save_every and self.state.policy_version % save_every == 0) or self.state.policy_version == total:
                    self._checkpoint()
        finally:
            writer.close()
            if bar is not None:
                bar.close()
            self._drain()
        summary = summarize(self.history, self.run_dir, self.buffer.dropped_stale)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def _drain(self) -> None:
        """Let in-flight work finish or cancel it, so actors are idle when the run stops."""
        for ref in list(self.in_flight):
            self._ray.cancel(ref, force=False)
        self.in_flight.clear()


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="CDPA updates", unit="update")


def summarize(history: list[dict], run_dir: Path, dropped_stale: int) -> dict:
    """What a person wants to see at the end of a run: trend, signal quality, where time went."""
    if not history:
        return {"updates": 0, "run_dir": str(run_dir)}
    timing_keys = sorted({k for m in history for k in m if k.startswith("timing/")})
    half = max(1, len(history) // 2)
    return {
        "updates": len(history),
        "run_dir": str(run_dir),
        "reward_first_half": statistics.fmean(m["reward/step_mean"] for m in history[:half]),
        "reward_second_half": statistics.fmean(m["reward/step_mean"] for m in history[half:] or history[-1:]),
        "reward_per_update": [round(m["reward/step_mean"], 4) for m in history],
        "parse_rate": history[-1].get("reward/parse_rate"),
        "zero_advantage_rate": statistics.fmean(m.get("advantage/zero_rate", float("nan")) for m in history),
        "dropped_stale": dropped_stale,
        "timing_mean_per_update": {k: round(statistics.fmean(m.get(k, 0.0) for m in history), 3)
                                   for k in timing_keys},
    }
