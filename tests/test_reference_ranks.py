"""The reference policy sharded over ``learner.reference_num_ranks`` ZeRO-3 ranks: the split of a call's groups
and the padding forwards by hand, the config key checked and counted, then two real Ray ranks (gloo, tiny Llama)
whose log-probs equal the single reference's while each holds half of the weights, and a dead rank that fails
the group instead of hanging."""

from __future__ import annotations

import pytest

from cdra_ray.learner.reference_sharded import reference_shares, zero3_inference_config


# ------------------------------------------------------------------------------------------ pure bookkeeping
def test_groups_are_split_contiguously_and_every_rank_runs_the_busiest_ranks_forwards():
    # 3 groups of 3 rows on 2 ranks, micro-batches of 2 rows: rank 0 has group 0 (3 rows: 2 forwards),
    # rank 1 groups 1-2 (6 rows: 3 forwards), so rank 0 pads with one forward
    assert reference_shares([3, 3, 3], 2, 2) == [([0], 1), ([1, 2], 0)]
    # uneven groups: 5 | 1 + 1 rows, micro-batches of 4 -> 2 and 1 forwards
    assert reference_shares([5, 1, 1], 2, 4) == [([0], 0), ([1, 2], 1)]
    # more ranks than groups: the idle ranks run only padding forwards
    assert reference_shares([2], 3, 8) == [([], 1), ([], 1), ([0], 0)]
    assert reference_shares([], 2, 4) == [([], 0), ([], 0)]
    for world in (1, 2, 3, 5):
        shares = reference_shares([4, 1, 7, 2, 2, 3, 5], world, 3)
        assert [g for share, _ in shares for g in share] == list(range(7))  # in order, each group once
        totals = {-(-sum([4, 1, 7, 2, 2, 3, 5][g] for g in share) // 3) + pad for share, pad in shares}
        assert len(totals) == 1  # the same number of forwards on every rank
    with pytest.raises(ValueError, match="micro_batch_size"):
        reference_shares([3], 2, 0)


def test_zero3_inference_config_has_no_optimizer():
    config = zero3_inference_config("float32", 2)
    assert config["zero_optimization"] == {"stage": 3} and "optimizer" not in config
    assert config["train_batch_size"] == 2 and "bf16" not in config
    assert zero3_inference_config("bfloat16", 4)["bf16"] == {"enabled": True}


def test_reference_num_ranks_is_checked_and_counted():
    from cdra_ray.actors.environment import concurrent_threads
    from cdra_ray.actors.placement import custom_resource_demand
    from cdra_ray.actors.wiring import total_cpus
    from cdra_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="learner.reference_num_ranks=0"):
        load_config("tiny_test", ["learner.reference_num_ranks=0"])
    base = ["learner.num_cpus=2", "learner.resources={node_b: 1}", "train.groups_per_update=2"]
    one, three = (load_config("tiny_test", [f"learner.reference_num_ranks={n}", *base]) for n in (1, 3))
    assert one.learner.reference_num_ranks == 1  # the default: one reference actor
    assert total_cpus(three) - total_cpus(one) == 2 * 2  # two more reference ranks of 2 CPUs
    # one learner rank + three reference ranks ask for node_b
    assert custom_resource_demand(one)["node_b"] == 2 and custom_resource_demand(three)["node_b"] == 4
    # synchronous, several groups in flight: the reference's ranks are busy together with rollout and reward
    assert sum(n for _, n in concurrent_threads(three)) - sum(n for _, n in concurrent_threads(one)) == 2 * 2


# ------------------------------------------------------------------------------------------ real ranks on Ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from cdra_ray.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=64, layers=2, heads=2, seed=0)


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.e2e
def test_two_sharded_ranks_give_the_single_references_logprobs(local_ray, tiny_dir):
    import torch
    from test_learner_deepspeed import make_groups

    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.reference_group import start_reference_group
    from cdra_ray.learner.reference import ReferencePolicy

    groups = make_groups(3, group_size=3, seed=4)  # odd: one rank has one group, the other two (and pads)
    options = {"dtype": "float32", "num_threads": 1, "micro_batch_size": 2}
    single = ReferencePolicy(tiny_dir, **options).logprobs(groups)  # prompts shared, the default
    group = start_reference_group(str(tiny_dir), options, num_ranks=2, num_cpus=1, num_gpus=0,
                                  env_vars=actor_env(1))
    try:
        assert group.num_ranks == 2
        held = ray.get([rank.partition_numel.remote() for rank in group.ranks])
        assert ray.get([rank.loaded_partitioned.remote() for rank in group.ranks]) == [True, True]
        # called the way the driver calls the single reference actor: one group per call, results in order
        annotated = ray.get([group.annotate_group.remote(g) for g in groups])
        # each rank's share directly: 1 and 2 groups, so rank 0 runs a padding forward
        shares = ray.get([rank.share_logprobs.remote(groups) for rank in group.ranks])
        token = ray.get(group.incarnation.remote())
        assert token == ray.get(group.front.incarnation.remote())

        # a rank that dies fails the group's calls (Ray's actor-death error), it does not hang
        ray.kill(group.ranks[1])
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(group.annotate_group.remote(groups[0]), timeout=120)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(group.incarnation.remote(), timeout=120)
    finally:
        group.kill()
    assert [len(s) for s in shares] == [1, 2]
    full = held[0][1]
    shares_of = [numel / total for numel, total in held]
    print(f"per-rank parameter share {shares_of} of {full}")
    assert all(total == full for _, total in held) and all(share < 0.6 for share in shares_of)
    assert sum(numel for numel, _ in held) >= full  # together the ranks hold every element (plus padding)
    assert [g.scenario.uid for g in annotated] == [g.scenario.uid for g in groups]
    diffs = [float((g.ref_logprobs - s).abs().max()) for g, s in zip(annotated, single)]
    diffs += [float((a - s).abs().max()) for a, s in zip(shares[0] + shares[1], single)]
    print(f"max |logprob 2 ranks - 1 rank| = {max(diffs):.2e}")
    assert all(torch.equal(g.ref_logprobs == 0, s == 0) for g, s in zip(annotated, single))  # same layout
    assert max(diffs) < 1e-5
    assert min(float(s.min()) for s in single) < -1.0  # real log-probs, not zeros


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.e2e
def test_tiny_run_with_a_two_rank_reference_starts_at_zero_kl(local_ray, tmp_path):
    """The reference is the initial policy, so the first update's KL to it is ~0 only if the sharded reference's
    log-probs reached the learner in each group's own order (zeros or shuffled rows would give a large KL)."""
    import json

    from cdra_ray.actors.reference_group import ReferenceGroup
    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.config import load_config
    from cdra_ray.train import build_run

    config = load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.progress_bar=false",
                                       "rollout.engine=hf", "reward.engine=hf", "learner.reference_num_ranks=2",
                                       "train.total_updates=1", "train.groups_per_update=2"])
    driver, actors = build_run(config)
    try:
        assert isinstance(actors.reference, ReferenceGroup) and actors.reference.num_ranks == 2
        summary = driver.run(progress=False)
    finally:
        stop_actors(actors)
    assert summary["updates"] == 1
    run_dir = tmp_path / "tiny_test"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = metrics[0]
    print(f"first update: learner/kl_mean={first['learner/kl_mean']:.2e}")
    assert first["learner/num_samples"] == 2 * config.rollout.group_size
    assert abs(first["learner/kl_mean"]) < 1e-4
