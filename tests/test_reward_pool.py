"""Reward replicas and placement without Ray: the pool's routing (least outstanding calls, ties, a replica that
died for good), its summed metrics, and the checks of reward.num_replicas and the roles' custom resources."""

from __future__ import annotations

import math

import pytest

from cdra_ray.actors.placement import check_custom_resources, custom_resource_demand, custom_resources
from cdra_ray.actors.reward_pool import RewardPool, choose_replica, pool_metrics
from cdra_ray.actors.reward_service import ServiceCounts
from cdra_ray.config import ConfigError, load_config
from cdra_ray.rewards.base import RewardMetrics


class FakeRef:
    def __init__(self, replica: int, arg):
        self.replica, self.arg = replica, arg


class FakeCalls:
    """Stands in for Ray: ``done`` holds the refs that have finished; ``put`` returns the value itself."""

    def __init__(self):
        self.done: set = set()

    def finished(self, refs):
        return [r for r in refs if r in self.done]

    def get(self, refs):
        return list(refs)

    def put(self, value):
        return value


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class FakeReplica:
    def __init__(self, index: int, counts: ServiceCounts | None = None):
        self.calls: list = []
        self.score_group = _Remote(self._score)
        self.counts = _Remote(lambda: counts)
        self.index = index

    def _score(self, arg):
        ref = FakeRef(self.index, arg)
        self.calls.append(arg)
        return ref


def _pool(n: int):
    calls = FakeCalls()
    return RewardPool([FakeReplica(i) for i in range(n)], calls), calls


def test_choose_replica_takes_the_fewest_outstanding_then_the_least_recently_picked():
    assert choose_replica([2, 0, 1], [-1, -1, -1]) == 1  # fewest outstanding
    assert choose_replica([1, 1, 1], [5, 3, 4]) == 1  # tie: picked longest ago
    assert choose_replica([1, 1, 1], [5, -1, -1]) == 1  # never picked beats picked; then the lower index
    assert choose_replica([0, 3, 3], [9, -1, -1]) == 0  # load wins over recency
    assert choose_replica([0, 3, 3], [9, -1, -1], down={0}) == 1  # a replica out of the pool is skipped
    with pytest.raises(RuntimeError, match="no reward replica is left: all 2"):
        choose_replica([0, 0], [-1, -1], down={0, 1})


def test_an_idle_pool_takes_turns_and_a_busy_replica_is_passed_over():
    pool, calls = _pool(3)
    first = [pool.score_group.remote(f"g{i}") for i in range(3)]
    assert [r.replica for r in first] == [0, 1, 2]  # all idle: one each
    assert pool.outstanding() == [1, 1, 1]
    calls.done.add(first[1])  # replica 1 finished its call: the only one with nothing outstanding
    assert pool.score_group.remote("g3").replica == 1
    assert pool.score_group.remote("g4").replica == 0  # all at 1 again: 0 was picked longest ago
    calls.done.update(first)
    assert pool.outstanding() == [1, 1, 0]
    assert pool.score_group.remote("g5").replica == 2
    assert pool.routed == [2, 2, 2]
    assert [pool.replicas[i].calls for i in range(3)] == [["g0", "g4"], ["g1", "g3"], ["g2", "g5"]]


def test_a_synchronous_run_alternates_replicas():
    """One call at a time (max_staleness 0, one group per update): each finishes before the next is routed."""
    pool, calls = _pool(2)
    served = []
    for i in range(6):
        ref = pool.score_group.remote(i)
        served.append(ref.replica)
        calls.done.add(ref)
    assert served == [0, 1, 0, 1, 0, 1]


def test_a_replica_that_died_for_good_leaves_the_pool_and_the_last_one_cannot():
    pool, calls = _pool(3)
    refs = [pool.score_group.remote(i) for i in range(3)]
    assert [name for name, _ in pool.members()] == ["reward service 0", "reward service 1", "reward service 2"]
    assert pool.retire("reward service 1")
    assert [name for name, _ in pool.members()] == ["reward service 0", "reward service 2"]
    # its outstanding call failed with it: no longer load anywhere, and nothing new goes to it
    assert pool.outstanding() == [1, 0, 1]
    calls.done.update(refs)
    assert [pool.score_group.remote(i).replica for i in range(4)] == [0, 2, 0, 2]
    assert pool.retire("reward service 0")
    assert not pool.retire("reward service 2")  # the last replica: the run must stop instead
    assert [name for name, _ in pool.members()] == ["reward service 2"]


def _counts(requests, constrained, free, defaulted, batches, groups):
    return ServiceCounts(RewardMetrics(requests=requests, parsed_constrained=constrained, parsed_free=free,
                                       defaulted=defaulted), batches, groups)


def test_pool_metrics_sum_the_replicas_and_the_parse_rate_is_the_runs():
    a = _counts(requests=10, constrained=6, free=0, defaulted=2, batches=3, groups=2)
    b = _counts(requests=12, constrained=3, free=1, defaulted=0, batches=4, groups=3)
    m = pool_metrics([a, b])
    assert m["reward/requests"] == 22 and m["reward/defaulted"] == 2
    assert m["reward/batches"] == 7 and m["reward/groups"] == 5
    # parsed 6 + 3 + 1 = 10 of generated 10 + 2 = 12 (not the mean of the replicas' 6/8 and 4/4)
    assert math.isclose(m["reward/parse_rate"], 10 / 12)
    assert m["reward/replica_0/groups"] == 2 and m["reward/replica_1/groups"] == 3
    # one replica's metrics equal one service's own
    assert {k: v for k, v in pool_metrics([a]).items() if "replica_" not in k} == a.to_log_dict()


def test_pool_metrics_keep_the_last_counts_of_a_retired_replica():
    calls = FakeCalls()
    replicas = [FakeReplica(0, _counts(4, 4, 0, 0, 1, 1)), FakeReplica(1, _counts(6, 5, 0, 1, 2, 2))]
    pool = RewardPool(replicas, calls)
    assert pool.metrics.remote()["reward/groups"] == 3
    replicas[1].counts = _Remote(lambda: pytest.fail("a retired replica must not be asked"))
    pool.retire("reward service 1")
    replicas[0].counts = _Remote(lambda: _counts(8, 8, 0, 0, 2, 2))
    m = pool.metrics.remote()
    assert m["reward/groups"] == 4 and m["reward/requests"] == 14 and m["reward/replica_1/groups"] == 2


# -- config -----------------------------------------------------------------------------------------------------

def test_num_replicas_and_resources_load_and_default():
    default = load_config("tiny_test")
    assert default.reward.num_replicas == 1
    assert default.rollout.resources == default.reward.resources == default.learner.resources == {}
    c = load_config("tiny_test", ["reward.num_replicas=3", "reward.resources={node_b: 0.5}",
                                  "rollout.resources={node_b: 1}", "learner.resources={node_a: 2, big_mem: 1}"])
    assert c.reward.num_replicas == 3 and c.reward.resources == {"node_b": 0.5}
    # 3 replicas x 0.5 + 1 rollout worker x 1; learner and reference x 2 each
    assert custom_resource_demand(c) == {"node_b": 2.5, "node_a": 4.0, "big_mem": 2.0}
    assert custom_resources(c.reward.resources) == {"resources": {"node_b": 0.5}}
    assert custom_resources({}) == {}


@pytest.mark.parametrize("override, message", [
    ("reward.num_replicas=0", r"reward\.num_replicas=0: must be > 0"),
    ("reward.num_replicas=-2", r"reward\.num_replicas=-2: must be > 0"),
    ("reward.num_replicas=1.5", r"reward\.num_replicas"),
    ("reward.resources={node_b: 0}", r"reward\.resources\.node_b=0\.0: must be a number > 0"),
    ("learner.resources={node_a: -1}", r"learner\.resources\.node_a=-1\.0: must be a number > 0"),
    ("rollout.resources={node_b: abc}", r"rollout\.resources\.node_b"),
    ("rollout.resources={node_b: .nan}", r"rollout\.resources\.node_b=nan: must be a finite number"),
    ("reward.resources={GPU: 1}", r"reward\.resources\.GPU: Ray's built-in resource; set reward\.num_cpus"),
    ("learner.resources={memory: 1}", r"learner\.resources\.memory: Ray's built-in"),
    ("reward.resources={'': 1}", r"reward\.resources: resource name '' must be a non-empty string"),
    ("reward.resources=[node_b]", r"invalid value at 'reward\.resources'"),
])
def test_bad_replica_and_resource_settings_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny_test", [override])


def test_a_resource_the_cluster_lacks_is_refused_before_any_actor_starts():
    c = load_config("tiny_test", ["reward.num_replicas=2", "reward.resources={node_b: 1}",
                                  "learner.resources={node_a: 1}"])
    check_custom_resources(c, {"CPU": 8.0, "node_a": 2.0, "node_b": 2.0})  # exactly enough
    with pytest.raises(ConfigError, match=r"reward\.resources\.node_b: the run's actors ask for 2 in total but the "
                                          r"Ray cluster offers 1 \(custom resources it has: \['node_a', 'node_b'\]\)"):
        check_custom_resources(c, {"CPU": 8.0, "node_a": 2.0, "node_b": 1.0, "node:10.0.0.1": 1.0})
    with pytest.raises(ConfigError, match=r"learner\.resources\.node_a: .* offers 0"):
        check_custom_resources(c, {"CPU": 8.0, "node_b": 4.0})
