"""The GPU weight path's failure handling and cache hygiene, on fakes of vLLM's LLM (no GPU, no Ray).

What must hold: after an NCCL update the rollout engine's prefix cache is dropped; a transfer that fails
half-way (on the engine's side or at the sender) ends in errors, and no later call waits forever on the
engine lock. Every wait below is bounded so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import threading

import pytest

from cdra_ray.actors.rollout_worker import RolloutWorker
from cdra_ray.engines.base import Completion
from cdra_ray.learner.weight_sync_gpu import (
    FanOutSyncClient,
    NcclWeightSync,
    free_port_all_interfaces,
    rendezvous_endpoint,
)
from cdra_ray.messages import Scenario
from cdra_ray.models.tiny import train_tiny_tokenizer

BOUND_S = 20.0  # a call that has not returned by then is taken to hang
TOKENIZER = train_tiny_tokenizer()


class FakeLLM:
    """The slice of ``vllm.LLM`` the rollout worker's NCCL path calls; records the order of calls."""

    def __init__(self, fail_update: bool = False, block_update: threading.Event | None = None):
        self.calls: list[tuple] = []
        self.fail_update = fail_update
        self.block_update = block_update
        self.reset_ok = True

    def init_weight_transfer_engine(self, request):
        self.calls.append(("init",))

    def start_weight_update(self):
        self.calls.append(("start",))

    def update_weights(self, request):
        self.calls.append(("update",))
        if self.block_update is not None:  # a worker inside the NCCL receive, waiting for a sender that died
            self.block_update.wait(BOUND_S * 3)
        if self.fail_update:
            raise RuntimeError("NCCL error: remote process exited")

    def finish_weight_update(self, weight_version=None):
        self.calls.append(("finish", weight_version))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return self.reset_ok


class FakeEngine:
    def __init__(self, llm: FakeLLM):
        self.llm = llm
        self.tokenizer = TOKENIZER
        self.generated = 0

    def generate(self, prompts, settings):
        self.generated += 1
        ids = TOKENIZER.encode("Step 1: ok", add_special_tokens=False)
        return [[Completion("Step 1: ok", ids, [-0.1] * len(ids), "stop")] * settings.n for _ in prompts]

    def load_weights(self, named_tensors):
        pass

    def sequence_logprobs(self, prompt_ids, continuation_ids):
        return [-1.0] * len(continuation_ids)


def bounded(fn, *args):
    """Run ``fn`` on a thread; return ("ok", value) / ("error", exc), or ("hang", None) after BOUND_S."""
    box: dict = {}

    def target():
        try:
            box["ok"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    if thread.is_alive():
        return "hang", None
    return ("ok", box["ok"]) if "ok" in box else ("error", box["error"])


def worker_for(llm: FakeLLM) -> RolloutWorker:
    return RolloutWorker(FakeEngine(llm), group_size=2, max_new_tokens=8, max_wait_s=0.0)


SCENARIO = Scenario("u1", "I like tea.", "What should I drink?")


def test_a_completed_nccl_update_resets_the_prefix_cache_after_finishing_and_tags_the_version():
    llm = FakeLLM()
    worker = worker_for(llm)
    worker.start_weight_update()
    worker.update_weights({"names": ["w"]})
    worker.finish_weight_update("4")
    assert llm.calls == [("start",), ("update",), ("finish", "4"), ("reset_prefix_cache",)]
    assert worker.policy_version == 4
    status, group = bounded(worker.generate_group, SCENARIO)  # the engine lock was released
    assert status == "ok" and group.policy_version == 4


def test_a_prefix_cache_that_cannot_be_reset_is_an_error_not_stale_kv():
    llm = FakeLLM()
    llm.reset_ok = False
    worker = worker_for(llm)
    worker.start_weight_update()
    with pytest.raises(RuntimeError, match="prefix cache"):
        worker.finish_weight_update("1")
    status, err = bounded(worker.generate_group, SCENARIO)
    assert status == "error" and "unusable" in str(err)


def test_engine_side_failure_mid_broadcast_releases_the_lock_and_later_calls_fail_fast():
    llm = FakeLLM(fail_update=True)
    worker = worker_for(llm)
    worker.start_weight_update()  # takes the engine lock
    with pytest.raises(RuntimeError, match="NCCL error"):
        worker.update_weights({"names": ["w"]})
    for call, args in ((worker.generate_group, (SCENARIO,)), (worker.sequence_logprobs, ([1, 2], [3])),
                       (worker.load_weights, ({}, 2)), (worker.start_weight_update, ())):
        status, err = bounded(call, *args)
        assert status == "error", f"{call.__name__} returned {status} after a failed update"
        assert "weight update failed" in str(err) and "NCCL error" in str(err)
    assert worker.engine.generated == 0  # never generated from half-loaded weights


def test_sender_side_failure_aborts_a_worker_blocked_in_the_receive():
    release = threading.Event()
    llm = FakeLLM(block_update=release)
    worker = worker_for(llm)
    worker.start_weight_update()
    receiving = threading.Thread(target=worker.update_weights, args=({"names": ["w"]},), daemon=True)
    receiving.start()  # blocks like a worker waiting inside NCCL for a sender that is gone
    waiting = {}
    generator = threading.Thread(target=lambda: waiting.setdefault("r", bounded(worker.generate_group, SCENARIO)),
                                 daemon=True)
    generator.start()  # a streamed request queued behind the update
    worker.abort_weight_update("learner-side weight broadcast of version 3 failed: ValueError: injected")
    generator.join(BOUND_S + 5)
    status, err = waiting["r"]
    assert status == "error" and "injected" in str(err)
    assert worker.engine.generated == 0
    release.set()
    receiving.join(BOUND_S)


class ScriptedClient:
    """One engine's control plane as NcclWeightSync sees it (records calls; abort optional)."""

    def __init__(self, log: list, name: str, abortable: bool = True, abort_hangs: bool = False):
        self.log, self.name, self.abort_hangs = log, name, abort_hangs
        if not abortable:
            self.abort_weight_update = None

    def init_weight_transfer_engine(self, init_info):
        self.log.append((self.name, "init"))

    def start_weight_update(self):
        self.log.append((self.name, "start"))

    def update_weights(self, update_info):
        self.log.append((self.name, "update"))

    def finish_weight_update(self, weight_version=None):
        self.log.append((self.name, "finish", weight_version))

    def abort_weight_update(self, reason):  # replaced by None when not abortable
        if self.abort_hangs:
            threading.Event().wait(BOUND_S * 3)
        self.log.append((self.name, "abort", reason))


class BrokenTrainerEngine:
    """Stands in for vLLM's NCCL trainer engine: starts the update, then the broadcast raises."""

    def __init__(self, client):
        self.client, self.shut_down = client, False

    def send_weights(self):
        self.client.start_weight_update()
        raise ValueError("injected failure after 3 of 7 tensors")

    def shutdown(self):
        self.shut_down = True


def test_failed_send_aborts_every_engine_closes_the_group_and_raises():
    log: list = []
    sync = NcclWeightSync([ScriptedClient(log, "a"), ScriptedClient(log, "b")], [1, 2],
                          master_address="10.0.0.5", master_port=29500)
    engine = BrokenTrainerEngine(sync.client)
    sync._engine = engine  # what connect() sets after the rendezvous
    status, err = bounded(sync.send, 3)
    assert status == "error" and isinstance(err, RuntimeError)
    assert "version 3" in str(err) and "injected failure" in str(err)
    aborts = sorted(entry[0] for entry in log if entry[1] == "abort")
    assert aborts == ["a", "b"] and all("injected failure" in e[2] for e in log if e[1] == "abort")
    assert engine.shut_down and sync._engine is None
    with pytest.raises(RuntimeError, match="failed send closed the group"):
        sync.send(4)


def test_abort_fan_out_is_bounded_and_skips_clients_without_abort():
    log: list = []
    clients = [ScriptedClient(log, "ok"), ScriptedClient(log, "silent", abort_hangs=True),
               ScriptedClient(log, "old", abortable=False)]
    fan_out = FanOutSyncClient(clients, [1, 1, 1])
    status, unreached = bounded(fan_out.abort_weight_update, "why", 0.5)
    assert status == "ok"
    assert [line.split(":")[0] for line in unreached] == ["engine 1"]  # the one that never answered
    assert ("ok", "abort", "why") in log


def test_rendezvous_port_is_free_on_every_interface_of_this_host():
    address, port = rendezvous_endpoint(node_ip="10.1.2.3")
    assert address == "10.1.2.3" and 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", port))  # what the store on rank 0 does
    assert free_port_all_interfaces() > 0
