"""Rollout worker, reward service and reference policy killed mid-call: Ray restarts them, the driver catches the
rollout worker up on the weights, resubmits what was in flight, and every scenario is trained exactly once."""

from __future__ import annotations

import pytest

from fault_tools import KillMidStage, data_order, read_jsonl, tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.e2e, pytest.mark.slow]


def test_rollout_reward_and_reference_deaths_lose_and_duplicate_no_group(local_ray, tmp_path):
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.train import build_run

    ray = local_ray
    config = tiny_config(tmp_path, "train.total_updates=4", "run.max_actor_restarts=2")
    driver, actors = build_run(config)
    worker, reward, reference = actors.rollout_workers[0], actors.reward, actors.reference
    fixed_prompt, fixed_continuation = [1, 5, 9, 14, 20], [33, 40, 41, 7, 3, 2]
    killer = KillMidStage(driver, [(1, 0, worker, "SIGKILL"), (2, 1, reward, "SIGKILL"), (2, 2, reference, "SIGKILL")])
    killer.start()
    try:
        summary = driver.run(progress=False)
        killer.join(timeout=5)
        # the restarted engine holds the learner's weights: same log-probs of a fixed continuation
        learner_lp = ray.get(actors.learner.sequence_logprobs.remote(fixed_prompt, fixed_continuation))
        engine_lp = ray.get(worker.sequence_logprobs.remote(fixed_prompt, fixed_continuation))
    finally:
        stop_actors(actors)
    assert killer.error is None and len(killer.killed) == 3

    assert summary["updates"] == 4
    assert summary["actor_restarts"] == {"rollout worker 0": 1, "reward service": 1, "reference policy": 1}
    # each death failed the chain in flight at that stage, which was resubmitted from that stage (a call that had
    # not left the driver yet when the actor died waits for the restarted one instead: nothing to resubmit)
    resubmitted = summary["resubmitted_by_stage"]
    assert resubmitted["generate"] == 1 and resubmitted["score"] == 1 and resubmitted["annotate"] <= 1
    assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp)) < 1e-4

    metrics = read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")
    trained = [uid for m in metrics for uid in m["trained_uids"]]
    # groups lost = 0 and duplicated = 0: exactly the data order, each scenario once
    assert trained == data_order(config, 4)
    assert all(m["groups/policy_lag_max"] == 0 for m in metrics)  # no group sampled by stale weights
    assert driver.order.consumed == 4 and not driver.in_flight


def test_a_spent_restart_budget_stops_the_run_naming_the_actor(local_ray, tmp_path):
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.driver.faults import ActorFailure
    from cdra_ray.train import build_run

    config = tiny_config(tmp_path, "train.total_updates=3", "run.max_actor_restarts=0")
    driver, actors = build_run(config)
    killer = KillMidStage(driver, [(1, 1, actors.reward, "ray.kill")])
    killer.start()
    try:
        with pytest.raises(ActorFailure, match=r"reward service failed 1 times .*run.max_actor_restarts=0"):
            driver.run(progress=False)
    finally:
        stop_actors(actors)
    assert killer.killed and killer.killed[0][1] == 1
