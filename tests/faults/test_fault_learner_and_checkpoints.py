"""The learner killed (SIGKILL) as a checkpoint is being written: the run stops naming the learner, the previous
checkpoint is intact, and ``run.resume=true`` relaunches the groups that were in flight, neither skipping nor
repeating a scenario. A checkpoint writer SIGKILLed mid-save leaves the previous checkpoint loadable."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fault_tools import data_order, pid_of, read_jsonl, sigkill, tiny_config


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.e2e
@pytest.mark.slow
def test_learner_death_stops_the_run_and_resume_relaunches_the_groups_in_flight(local_ray, tmp_path):
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.driver.checkpointing import latest_checkpoint, load_driver_state
    from cdra_ray.driver.faults import ActorFailure
    from cdra_ray.train import build_run

    overrides = ["train.total_updates=4", "train.save_every=1", "train.max_staleness=1"]
    config = tiny_config(tmp_path, *overrides)
    driver, actors = build_run(config)
    learner_pid = pid_of(actors.learner.ranks[0])

    def kill_learner(update, metrics):  # runs just before update 3's checkpoint is written
        if update == 3:
            sigkill(learner_pid)

    try:
        with pytest.raises(ActorFailure, match=r"learner actor died during checkpointing of update 3 .*"
                                               r"update_000002.* run.resume=true"):
            driver.run(progress=False, on_update=kill_learner)
    finally:
        stop_actors(actors)
    run_dir = tmp_path / "tiny_test"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "update_000002"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "update_000001", "update_000002"]
    at_checkpoint = load_driver_state(checkpoint)
    assert at_checkpoint.pending  # asynchronous: groups were in flight when it was written
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3  # update 3 was trained, then lost with the learner

    driver, actors = build_run(tiny_config(tmp_path, *overrides, "run.resume=true"))
    try:
        assert driver.state.policy_version == 2
        driver.run(progress=False)
    finally:
        stop_actors(actors)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["update"] for m in metrics] == [1, 2, 3, 4]  # update 3 redone once, its lost record dropped
    trained = [uid for m in metrics for uid in m["trained_uids"]]
    final = load_driver_state(latest_checkpoint(run_dir))
    assert final.trained_uids == trained and len(set(trained)) == len(trained) == 4  # duplicated = 0
    assert final.dropped_stale == 0  # the resumed engines were tagged with the restored version
    uids = [s.uid for s in driver.scenarios]
    relaunched = {uids[i] for i in at_checkpoint.pending}
    assert relaunched <= set(trained[2:])  # in flight at the checkpoint -> trained after the resume
    # lost = 0: every scenario drawn is trained, dropped as stale (counted), or in flight in the last checkpoint
    in_flight_at_end = [uids[i] for i in final.pending]
    assert set(trained) | set(in_flight_at_end) == set(data_order(config, final.consumed))
    assert len(trained) + len(in_flight_at_end) + final.dropped_stale == final.consumed


WRITER = """
import sys, time
from pathlib import Path
from cdra_ray.driver.checkpointing import DriverState, save_checkpoint

run = Path(sys.argv[1])

def write_learner(policy, state):
    policy.mkdir()
    (policy / "model.safetensors").write_bytes(b"half" * 100_000)
    (run / "writing").touch()
    time.sleep(120)  # SIGKILLed here, half way through the checkpoint

save_checkpoint(run, 2, DriverState(policy_version=2, consumed=9), write_learner)
"""


def _complete_writer(policy, state):
    policy.mkdir()
    (policy / "model.safetensors").write_bytes(b"weights")
    state.mkdir()


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    from cdra_ray.driver.checkpointing import DriverState, latest_checkpoint, load_driver_state, save_checkpoint

    first = save_checkpoint(tmp_path, 1, DriverState(policy_version=1, consumed=4), _complete_writer)
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    deadline = time.monotonic() + 60
    while not (tmp_path / "writing").exists():
        assert child.poll() is None and time.monotonic() < deadline, "the writer never got to the middle"
        time.sleep(0.02)
    sigkill(child.pid)
    assert child.wait(timeout=30) == -9
    assert latest_checkpoint(tmp_path) == first
    assert load_driver_state(first) == DriverState(policy_version=1, consumed=4)
    assert (first / "policy" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "checkpoints" / ".update_000002.partial").is_dir()  # the half-written scratch
    # the next save of that update clears the scratch and completes
    second = save_checkpoint(tmp_path, 2, DriverState(policy_version=2), _complete_writer)
    assert latest_checkpoint(tmp_path) == second
    assert not (tmp_path / "checkpoints" / ".update_000002.partial").exists()


def test_old_checkpoints_are_pruned_to_the_newest_ones(tmp_path):
    from cdra_ray.driver.checkpointing import DriverState, latest_checkpoint, save_checkpoint

    for update in range(1, 5):
        save_checkpoint(tmp_path, update, DriverState(policy_version=update), _complete_writer, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "update_000003", "update_000004"]
    assert latest_checkpoint(tmp_path).name == "update_000004"
