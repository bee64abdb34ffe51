"""The CDPA control loop: stream groups through rollout -> reward -> reference -> learner.

Each scenario becomes a chain of Ray calls (``generate_group`` -> ``score_group`` -> ``annotate_group``)
whose arguments are the previous call's ObjectRefs, so a group moves to the next stage the moment it is
ready, independently of the others: no lock-step batches. The driver only keeps the pipeline full, collects
finished groups in arrival order, and when B fresh ones are ready runs one update:

    train on B groups (the learner bumps the policy version)  ->  publish weights  ->  log  ->  (checkpoint)

An actor that dies mid-chain is restarted by Ray and the chain resubmitted from the stage that died
(:mod:`cdra_ray.driver.faults`); the learner's death stops the run with a resumable checkpoint behind it.

``max_staleness`` (see :mod:`cdra_ray.driver.schedule`) bounds how far the rollouts may run ahead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cdra_ray.actors.reward_pool import RewardPool
from cdra_ray.config.schema import Config
from cdra_ray.driver.checkpointing import DriverState, save_checkpoint
from cdra_ray.driver.faults import (ActorFailure, RestartTracker, actor_death_type, learner_failure,
                                    raises_actor_death)
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
    reward: Any  # one reward actor, or a RewardPool of replicas with the same calls (reward.num_replicas)
    reference: Any
    learner: Any
    weight_publisher: Any  # .publish(policy_version, wait, workers=None): object store, or NCCL broadcast (GPU)


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


STAGES = ("generate", "score", "annotate")  # the chain of calls every scenario goes through


@dataclass
class _Chain:
    """One scenario on its way through the stages: which worker generates it, the ObjectRef of each stage."""

    scenario: Scenario
    worker: int
    refs: list = field(default_factory=list)


class CDPADriver:
    def __init__(self, config: Config, run_dir: Path, scenarios: list[Scenario], actors: Actors,
                 state: DriverState | None = None):
        import ray  # the driver is the one place that schedules Ray work

        self._ray = ray
        self.config = config
        self.run_dir = Path(run_dir)
        self.scenarios = scenarios
        self.actors = actors
        self.state = state or DriverState()  # policy_version mirrors the learner's counter after every update
        self.order = ScenarioOrder(scenarios, seed=config.data.seed, shuffle=config.data.shuffle,
                                   consumed=self.state.consumed)
        self.buffer = GroupBuffer(config.train.groups_per_update, config.train.max_staleness)
        self.buffer.dropped_stale = self.state.dropped_stale
        self.timer = PhaseTimer()
        self.in_flight: dict[Any, _Chain] = {}
        self._to_relaunch = [scenarios[i] for i in self.state.pending]  # resumed: in flight at the checkpoint
        self._next_worker = 0
        self.restarts = RestartTracker(config.run.max_actor_restarts)
        self.resubmitted: dict[str, int] = {stage: 0 for stage in STAGES}
        self.last_checkpoint: Path | None = None
        self._last_save = time.monotonic()
        self.history: list[dict] = []

    # -- pipeline --------------------------------------------------------------------------------------
    def _next_scenario(self) -> Scenario:
        if self._to_relaunch:
            return self._to_relaunch.pop(0)
        return self.order.next()

    def _stage_actor(self, stage: int, chain: _Chain) -> tuple[str, Any]:
        if stage == 0:
            return f"rollout worker {chain.worker}", self.actors.rollout_workers[chain.worker]
        return ("reward service", self.actors.reward) if stage == 1 else ("reference policy", self.actors.reference)

    def _submit(self, chain: _Chain, from_stage: int = 0) -> None:
        """Launch ``chain`` from ``from_stage`` on, each call taking the previous stage's ObjectRef."""
        chain.refs = chain.refs[:from_stage]
        for stage in range(from_stage, len(STAGES)):
            _, actor = self._stage_actor(stage, chain)
            arg = chain.scenario if stage == 0 else chain.refs[-1]
            chain.refs.append(getattr(actor, f"{STAGES[stage]}_group").remote(arg))
        self.in_flight[chain.refs[-1]] = chain

    def _launch(self, scenario: Scenario) -> None:
        worker = self._next_worker % len(self.actors.rollout_workers)
        self._next_worker += 1
        self._submit(_Chain(scenario, worker))

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
            chain = self.in_flight.pop(ref)
            try:
                group = self._ray.get(ref)
            except Exception as err:  # noqa: BLE001 - an actor death is recovered, anything else re-raised
                self._recover(chain, err)
                continue
            self.buffer.add(group)

    # -- faults (see cdra_ray.driver.faults) -----------------------------------------------------------
    def _recover(self, chain: _Chain, err: BaseException) -> None:
        """A chain failed: if a stage's actor died, wait for Ray to restart it and resubmit from that stage."""
        for stage, ref in enumerate(chain.refs):
            death = raises_actor_death(ref)
            if death is None:
                continue
            name, actor = self._stage_actor(stage, chain)
            if stage == 1:
                self._observe_reward(cause=death)  # which replica of a pool died: each answers for itself
            elif self.restarts.observe(name, actor, cause=death) and stage == 0:
                self._catch_up_worker(chain.worker)
            self.resubmitted[STAGES[stage]] += 1
            log.warning("resubmitting scenario %r from its %s stage", chain.scenario.uid, STAGES[stage])
            self._submit(chain, from_stage=stage)
            return
        raise err  # not a death: a bug or a bad model output, which must stop the run

    def _catch_up_worker(self, index: int) -> None:
        """A restarted rollout worker holds the weights it was built from: give it the current ones first."""
        with self.timer.phase("weight_sync"):
            try:
                self.actors.weight_publisher.publish(self.state.policy_version, wait=True, workers=[index])
            except actor_death_type():
                self._check_actors("weight sync")

    def _check_actors(self, phase: str) -> None:
        """After a failed broadcast: the learner must be alive; restarted rollout workers are caught up."""
        try:
            self._ray.get(self.actors.learner.incarnation.remote())
        except actor_death_type() as err:
            raise learner_failure(phase, self.state.policy_version, err, self.last_checkpoint) from err
        for index, worker in enumerate(self.actors.rollout_workers):
            if self.restarts.observe(f"rollout worker {index}", worker):
                self._catch_up_worker(index)

    def _note_restarts(self) -> None:
        """Count deaths between calls too (an idle actor killed loses nothing but is one more restart), and
        catch up a rollout worker that was restarted while idle before it generates with its initial weights."""
        for index, worker in enumerate(self.actors.rollout_workers):
            if self.restarts.observe(f"rollout worker {index}", worker):
                self._catch_up_worker(index)
        self._observe_reward()
        self.restarts.observe("reference policy", self.actors.reference)

    def _reward_members(self) -> list[tuple[str, Any]]:
        reward = self.actors.reward
        return reward.members() if isinstance(reward, RewardPool) else [("reward service", reward)]

    def _observe_reward(self, cause: BaseException | None = None) -> None:
        """Watch every reward actor for restarts; a replica of a pool that died for good leaves the pool and the
        run goes on with the others (a single reward actor, or the last replica, stops the run)."""
        for name, actor in self._reward_members():
            try:
                self.restarts.observe(name, actor, cause=cause)
            except ActorFailure:
                if not (isinstance(self.actors.reward, RewardPool) and self.actors.reward.retire(name)):
                    raise
                log.warning("%s died for good; %d reward replicas go on", name, len(self._reward_members()))

    def _start_incarnations(self) -> None:
        ray = self._ray
        named = [(f"rollout worker {i}", w) for i, w in enumerate(self.actors.rollout_workers)]
        named += [*self._reward_members(), ("reference policy", self.actors.reference)]
        for (name, _), token in zip(named, ray.get([a.incarnation.remote() for _, a in named])):
            self.restarts.start(name, token)

    # -- one update ------------------------------------------------------------------------------------
    def _learn(self, batch: list[Group]) -> dict:
        ray = self._ray
        version_before = self.state.policy_version
        with self.timer.phase("learn"):
            try:
                learner_metrics = ray.get(self.actors.learner.train_on_groups.remote(batch))
            except actor_death_type() as err:
                raise learner_failure("training", version_before + 1, err, self.last_checkpoint) from err
        self.state.policy_version = int(learner_metrics["policy_version"])  # the learner counts versions
        self._publish()
        self._note_restarts()
        for group in batch:
            for phase, seconds in group.timings.items():
                self.timer.add(phase, seconds)
        metrics = {**group_metrics(batch), **namespaced_learner_metrics(learner_metrics)}
        metrics["groups/policy_lag_max"] = float(max(version_before - g.policy_version for g in batch))
        metrics["groups/dropped_stale_total"] = float(self.buffer.dropped_stale)
        metrics["faults/actor_restarts_total"] = float(sum(self.restarts.deaths.values()))
        metrics["faults/resubmitted_total"] = float(sum(self.resubmitted.values()))
        metrics.update(self._reward_metrics())
        metrics.update(self.timer.pop())
        metrics["trained_uids"] = [g.scenario.uid for g in batch]
        self.state.trained_uids.extend(metrics["trained_uids"])
        return metrics

    def _reward_metrics(self) -> dict:
        """The reward service's run totals; a restarted service counts from its restart on."""
        try:
            return self._ray.get(self.actors.reward.metrics.remote())
        except actor_death_type() as err:
            self._observe_reward(cause=err)
            return self._ray.get(self.actors.reward.metrics.remote())

    def _publish(self, wait: bool | None = None) -> None:
        """Weights and version to every engine; synchronous runs wait (the next groups must be sampled by the
        new weights)."""
        wait = self.config.train.max_staleness == 0 if wait is None else wait
        with self.timer.phase("weight_sync"):
            try:
                self.actors.weight_publisher.publish(self.state.policy_version, wait=wait)
            except actor_death_type():
                self._check_actors("weight sync")

    def _checkpoint_due(self) -> bool:
        t, version = self.config.train, self.state.policy_version
        return (version == t.total_updates or bool(t.save_every and version % t.save_every == 0)
                or bool(t.save_every_minutes and time.monotonic() - self._last_save >= 60 * t.save_every_minutes))

    def _checkpoint(self) -> Path:
        ray = self._ray
        pending = ([g.scenario.index for g in self.buffer.pending()]
                   + [c.scenario.index for c in self.in_flight.values()] + [s.index for s in self._to_relaunch])
        state = dataclasses.replace(self.state, consumed=self.order.consumed, pending=pending,
                                    dropped_stale=self.buffer.dropped_stale,
                                    trained_uids=list(self.state.trained_uids))

        def write_learner(policy_dir: Path, state_dir: Path) -> None:
            ray.get(self.actors.learner.save_policy.remote(str(policy_dir)))
            ray.get(self.actors.learner.save_state.remote(str(state_dir)))

        with self.timer.phase("checkpoint"):
            try:
                path = save_checkpoint(self.run_dir, self.state.policy_version, state, write_learner,
                                       keep=self.config.train.keep_checkpoints)
            except actor_death_type() as err:
                raise learner_failure("checkpointing", self.state.policy_version, err, self.last_checkpoint) from err
        self.last_checkpoint, self._last_save = path, time.monotonic()
        return path

    def run(self, progress: bool = True, on_update: Callable[[int, dict], None] | None = None,
            checkpoints: bool = True) -> dict:
        """Train until ``train.total_updates``; returns the summary (also written to ``summary.json``).

        ``on_update(update, metrics)`` is called after each update is logged (benchmarks time updates with it);
        ``checkpoints=False`` writes none, not even the final one.
        """
        total = self.config.train.total_updates
        writer = MetricsWriter(self.run_dir, tensorboard=self.config.run.tensorboard)
        bar = _progress_bar(progress, total, initial=self.state.policy_version)
        try:
            self._start_incarnations()
            if self.state.policy_version > 0:  # resumed: engines get the learner's version with its weights
                self._publish(wait=True)  # before they generate, or their groups would carry version 0
            while self.state.policy_version < total:
                self._fill_pipeline()
                self._collect()
                batch = self.buffer.pop_batch(self.state.policy_version)
                if batch is None:
                    continue
                metrics = self._learn(batch)
                writer.write(self.state.policy_version, metrics)
                self.history.append(metrics)
                if on_update is not None:
                    on_update(self.state.policy_version, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/step_mean']:+.3f}",
                                    zero_adv=f"{metrics.get('advantage/zero_rate', float('nan')):.2f}")
                if checkpoints and self._checkpoint_due():
                    self._checkpoint()
        finally:
            writer.close()
            if bar is not None:
                bar.close()
            self._drain()
        summary = summarize(self.history, self.run_dir, self.buffer.dropped_stale)
        summary["actor_restarts"] = dict(self.restarts.deaths)
        summary["resubmitted_by_stage"] = dict(self.resubmitted)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def _drain(self) -> None:
        """Cancel in-flight work, so actors are idle when the run stops."""
        for ref in list(self.in_flight):
            try:
                self._ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - an actor that is already gone has nothing to cancel
                pass
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
