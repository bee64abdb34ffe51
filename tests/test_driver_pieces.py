"""Driver building blocks without Ray: staleness buffer, micro-batching, atomic checkpoints, timers."""

import threading
from pathlib import Path

import pytest

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.driver.checkpointing import DriverState, latest_checkpoint, load_driver_state, save_checkpoint
from cdra_ray.driver.schedule import GroupBuffer
from cdra_ray.driver.timers import PhaseTimer
from cdra_ray.messages import Group, Sample, Scenario


def _group(uid: str, version: int) -> Group:
    return Group(Scenario(uid, "p", "q"), [1, 2], [Sample("x", [3], [-0.1])], policy_version=version)


def test_synchronous_buffer_takes_b_groups_in_arrival_order():
    buffer = GroupBuffer(groups_per_update=2, max_staleness=0)
    assert buffer.max_in_flight == 2
    buffer.add(_group("b", 0))
    assert buffer.pop_batch(learner_version=0) is None  # one of two ready
    buffer.add(_group("a", 0))
    assert [g.scenario.uid for g in buffer.pop_batch(0)] == ["b", "a"]
    assert len(buffer) == 0


def test_stale_groups_are_dropped_and_counted():
    buffer = GroupBuffer(groups_per_update=1, max_staleness=1)
    assert buffer.max_in_flight == 2
    for uid, version in [("old", 3), ("ok", 4), ("new", 5)]:
        buffer.add(_group(uid, version))
    # learner at version 5: lag 2 > 1 is stale, lag 1 and 0 are fine
    assert [g.scenario.uid for g in buffer.pop_batch(5)] == ["ok"]
    assert buffer.dropped_stale == 1 and buffer.dropped_uids == ["old"]
    assert [g.scenario.uid for g in buffer.pop_batch(5)] == ["new"]


def test_out_of_order_arrivals_are_each_trained_once():
    buffer = GroupBuffer(groups_per_update=2, max_staleness=0)
    trained = []
    for uid in ["c", "a", "d", "b"]:  # finishing order differs from launch order a, b, c, d
        buffer.add(_group(uid, 0))
        batch = buffer.pop_batch(0)
        if batch:
            trained += [g.scenario.uid for g in batch]
    assert sorted(trained) == ["a", "b", "c", "d"] and len(trained) == 4


def test_buffer_rejects_bad_settings():
    with pytest.raises(ValueError, match="groups_per_update"):
        GroupBuffer(0, 0)
    with pytest.raises(ValueError, match="max_staleness"):
        GroupBuffer(1, -1)


def test_micro_batcher_folds_concurrent_calls_and_keeps_results_apart():
    calls = []

    def double_all(items):
        calls.append(list(items))
        return [2 * x for x in items]

    batcher = MicroBatcher(double_all, max_wait_s=0.2)
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher(i))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2 * i for i in range(6)}
    assert sum(len(c) for c in calls) == 6
    assert len(calls) < 6  # at least two calls shared a batch


def test_micro_batcher_passes_errors_to_every_caller():
    def fail(items):
        raise RuntimeError("engine exploded")

    batcher = MicroBatcher(fail, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="engine exploded"):
        batcher(1)


def _fake_learner_writer(policy: Path, state: Path) -> None:
    policy.mkdir()
    (policy / "model.safetensors").write_text("weights")
    state.mkdir()


def test_checkpoint_round_trip_and_latest_pointer(tmp_path):
    state = DriverState(policy_version=2, consumed=7, pending=[4], trained_uids=["a", "b"])
    path = save_checkpoint(tmp_path, 2, state, _fake_learner_writer)
    assert latest_checkpoint(tmp_path) == path
    assert load_driver_state(path) == state
    assert (path / "policy" / "model.safetensors").read_text() == "weights"


def test_crash_while_writing_leaves_previous_checkpoint(tmp_path):
    first = save_checkpoint(tmp_path, 1, DriverState(policy_version=1), _fake_learner_writer)

    def crash(policy: Path, state: Path) -> None:
        policy.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, DriverState(policy_version=2), crash)
    assert latest_checkpoint(tmp_path) == first
    assert load_driver_state(first).policy_version == 1
    assert not (tmp_path / "checkpoints" / "update_000002").exists()


def test_phase_timer_accumulates_and_resets():
    timer = PhaseTimer()
    timer.add("generate", 1.5)
    timer.add("generate", 0.5)
    with timer.phase("learn"):
        pass
    out = timer.pop()
    assert out["timing/generate"] == 2.0 and "timing/learn" in out
    assert timer.pop() == {}
