"""The learner on several data-parallel ranks (``learner.num_ranks``): the row split and metric merge by hand,
then real Ray actors forming one gloo/DeepSpeed group on CPU with a tiny Llama: one update on 2 ranks equals one
on 1 rank (ZeRO 0, 2, 3; uneven splits), a 2-rank checkpoint resumes into a fresh 2-rank group exactly, a dead
rank fails the call instead of hanging, and a whole ``tiny_test`` run trains on 2 ranks."""

from __future__ import annotations


import pytest

from cdra_ray.learner.data_parallel import gradient_scale, merge_metric_sums, rank_micro_batches, rank_share


# ------------------------------------------------------------------------------------------ pure bookkeeping
def test_rank_shares_are_disjoint_contiguous_and_cover_every_row():
    rows = [7, 3, 9, 1, 4]  # a shuffled mini-batch
    assert rank_share(rows, 0, 2) == [7, 3] and rank_share(rows, 1, 2) == [9, 1, 4]  # 5 * 1 // 2 = 2
    for world in (1, 2, 3, 4, 7):
        shares = [rank_share(rows, r, world) for r in range(world)]
        assert [row for share in shares for row in share] == rows
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank"):
        rank_share(rows, 2, 2)


def test_rank_micro_batches_pad_to_the_busiest_rank():
    rows = list(range(9))
    # shares of 4 and 5 rows; micro-batches of 2: rank 0 has 2, rank 1 has 3, so rank 0 pads one empty pass
    assert rank_micro_batches(rows, 2, 0, 2) == [[0, 1], [2, 3], []]
    assert rank_micro_batches(rows, 2, 1, 2) == [[4, 5], [6, 7], [8]]
    assert rank_micro_batches(rows, 2, 0, 1) == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    # more ranks than rows: the idle rank still runs as many (empty) passes as the others
    assert rank_micro_batches([5], 3, 0, 2) == [[]] and rank_micro_batches([5], 3, 1, 2) == [[5]]


@pytest.mark.parametrize("aggregation", ["seq-mean-token-sum", "seq-mean-token-mean", "token-mean"])
def test_gradient_scales_of_all_ranks_sum_to_the_world_size(aggregation):
    """DeepSpeed divides the summed gradients by W: scales summing to W over every micro-batch of every rank
    give each row the weight it has in the one-rank loss."""
    tokens = [4, 7, 1, 9, 3]  # per row
    world = 2
    total = 0.0
    for rank in range(world):
        for rows in rank_micro_batches(list(range(5)), 2, rank, world):
            if rows:
                total += gradient_scale(aggregation, len(rows), sum(tokens[r] for r in rows), 5, sum(tokens), world)
    assert total == pytest.approx(world)
    # one micro-batch of rows {3, 4} on 2 ranks: token-mean weights by tokens, 12/24, times W
    expected = 12 / 24 * 2 if aggregation == "token-mean" else 2 / 5 * 2
    assert gradient_scale(aggregation, 2, 12, 5, 24, 2) == pytest.approx(expected)


def test_merged_metrics_sum_weighted_means_and_keep_extremes():
    rank0 = {"loss": 0.25, "ratio_min": 0.9, "ratio_max": 1.1}
    rank1 = {"loss": -0.5, "ratio_min": 0.8, "ratio_max": 1.05}
    assert merge_metric_sums([rank0, rank1, {}]) == {"loss": -0.25, "ratio_min": 0.8, "ratio_max": 1.1}


def test_group_routes_collectives_to_every_rank_and_the_rest_to_rank_0():
    from cdra_ray.actors.learner_group import LearnerGroup

    for zero_stage in (0, 2, 3):
        group = LearnerGroup(["rank0", "rank1"], zero_stage=zero_stage)
        for name in ("train_on_groups", "save_state", "load_state", "save_policy", "incarnation"):
            assert group.targets(name) == ["rank0", "rank1"], name
        for name in ("export_weights", "sequence_logprobs", "broadcast_weights"):  # gathers under ZeRO-3
            assert group.targets(name) == (["rank0", "rank1"] if zero_stage == 3 else ["rank0"]), name
        assert group.targets("policy_version") == group.targets("connect_weight_sync") == ["rank0"]
    with pytest.raises(AttributeError, match="no method 'optimizer'"):
        group.targets("optimizer")


def test_num_ranks_is_checked_and_counted():
    from cdra_ray.actors.wiring import total_cpus
    from cdra_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="learner.num_ranks=0"):
        load_config("tiny_test", ["learner.num_ranks=0"])
    with pytest.raises(ConfigError, match="learner.placement_strategy"):
        load_config("tiny_test", ["learner.placement_strategy=SPREAD_EVERYWHERE"])
    one, three = (load_config("tiny_test", [f"learner.num_ranks={n}", "learner.num_cpus=2"]) for n in (1, 3))
    assert total_cpus(three) - total_cpus(one) == 2 * 2  # two more ranks of 2 CPUs


def test_paper_preset_trains_on_two_gpu_ranks_within_four_gpus():
    from cdra_ray.config import load_config

    c = load_config("paper_qwen7b_4gpu")
    assert (c.learner.num_ranks, c.learner.zero_stage) == (2, 3)
    assert c.learner.num_gpus > 0.5  # two ranks can never be packed onto one GPU
    gpus = (c.rollout.num_gpus * c.rollout.num_workers + c.reward.num_gpus
            + c.learner.num_ranks * c.learner.num_gpus + c.learner.reference_num_gpus)
    assert gpus <= 4


# ------------------------------------------------------------------------------------------ real ranks on Ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from cdra_ray.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=64, layers=2, heads=2, seed=0)


def _settings(tiny_dir, **overrides):
    from cdra_ray.learner import LearnerSettings

    values = dict(model_dir=str(tiny_dir), lr=1e-3, micro_batch_size=2, num_threads=1, seed=0, beta=0.0)
    values.update(overrides)
    return LearnerSettings(**values)


def _group(settings, num_ranks):
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.actors.learner_group import start_learner_group

    return start_learner_group(settings, num_ranks=num_ranks, num_cpus=1, num_gpus=0, env_vars=actor_env(1))


def _weights(group):
    from cdra_ray.actors.shared_weights import unpack_weights

    return {name: t.detach().clone() for name, t in unpack_weights(ray.get(group.export_weights.remote()))}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _groups():
    from test_learner_deepspeed import make_groups

    return make_groups(3, group_size=3, seed=4)  # 9 rows: 2 ranks take 4 and 5, micro-batches of 2 -> uneven


SAME_UPDATE_CASES = {
    # ZeRO-0: two PPO epochs of mini-batches of 5 (pi_old all-reduced from both ranks, shuffled rows)
    0: dict(aggregation="seq-mean-token-sum", ppo_epochs=2, mini_batch_size=5),
    2: dict(aggregation="token-mean"),  # token weights
    # 2 ZeRO-3 ranks gather parameters in every forward, so they cannot share prompts (a rank-dependent number of
    # forwards): switched off for 1 rank too, so that only the split differs. (With sharing on the 1-rank side
    # Adam's first step, ~lr * sign(g), turns fp32 noise on near-zero gradients into weight differences ~2e-5.)
    3: dict(aggregation="seq-mean-token-mean", share_prompt_forward=False),
}


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.e2e
@pytest.mark.parametrize("zero_stage", sorted(SAME_UPDATE_CASES))
def test_two_ranks_make_the_same_update_as_one(local_ray, tiny_dir, zero_stage):
    settings = _settings(tiny_dir, zero_stage=zero_stage, **SAME_UPDATE_CASES[zero_stage])
    groups = _groups()
    results = {}
    for num_ranks in (1, 2):
        group = _group(settings, num_ranks)
        try:
            before = _weights(group)
            metrics = ray.get(group.train_on_groups.remote(groups))
            results[num_ranks] = (metrics, _weights(group))
        finally:
            group.kill()
    (m1, w1), (m2, w2) = results[1], results[2]
    assert _max_diff(before, w1) > 1e-4  # the update moved the weights
    weight_diff = _max_diff(w1, w2)
    print(f"ZeRO-{zero_stage}: |loss1-loss2|={abs(m1['loss'] - m2['loss']):.2e} "
          f"|gnorm1-gnorm2|={abs(m1['grad_norm'] - m2['grad_norm']):.2e} max|w1-w2|={weight_diff:.2e}")
    assert m1["num_samples"] == m2["num_samples"] == 9.0
    assert m2["optimizer_steps"] == m1["optimizer_steps"]
    assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    for key in ("ratio_min", "ratio_max", "clip_fraction", "zero_advantage_rate"):
        if key in m1:
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
    assert weight_diff < 1e-5


@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.e2e
def test_two_rank_checkpoint_resumes_into_a_fresh_two_rank_group(local_ray, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    settings = _settings(tiny_dir, zero_stage=3)
    groups = _groups()
    first = _group(settings, 2)
    try:
        ray.get(first.train_on_groups.remote(groups))
        ray.get(first.save_state.remote(str(tmp_path / "learner_state")))
        ray.get(first.save_policy.remote(str(tmp_path / "policy")))
        saved = _weights(first)
        expected = ray.get(first.train_on_groups.remote(groups))
        expected_weights = _weights(first)
    finally:
        first.kill()
    # the HF policy holds the full (gathered) weights of the update that was saved
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert max(float((p.detach() - saved[n]).abs().max()) for n, p in hf.named_parameters()) == 0.0

    second = _group(settings, 2)
    try:
        assert ray.get(second.load_state.remote(str(tmp_path / "learner_state"))) == 1
        assert ray.get(second.policy_version.remote()) == 1
        resumed = ray.get(second.train_on_groups.remote(groups))
        resumed_weights = _weights(second)

        # a rank that dies fails the group's call (Ray's actor-death error), it does not hang
        ray.kill(second.ranks[1])
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(second.train_on_groups.remote(groups), timeout=120)
    finally:
        second.kill()
    assert resumed["policy_version"] == expected["policy_version"] == 2.0
    assert resumed["loss"] == expected["loss"] and resumed["grad_norm"] == expected["grad_norm"]
    assert _max_diff(resumed_weights, expected_weights) == 0.0


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.deepspeed
@pytest.mark.e2e
@pytest.mark.slow
def test_tiny_run_trains_on_two_learner_ranks(local_ray, tmp_path):
    import json

    from cdra_ray.actors.wiring import stop_actors
    from cdra_ray.config import load_config
    from cdra_ray.train import build_run

    config = load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.progress_bar=false",
                                       "learner.num_ranks=2", "rollout.num_workers=1", "train.total_updates=1",
                                       "train.save_every=1"])
    driver, actors = build_run(config)
    try:
        assert actors.learner.num_ranks == 2
        summary = driver.run(progress=False)
        assert summary["updates"] == 1
        prompt, continuation = [1, 5, 9, 14, 20], [33, 40, 41, 7, 3, 2]
        learner_lp = ray.get(actors.learner.sequence_logprobs.remote(prompt, continuation))
        engine_lp = ray.get(actors.rollout_workers[0].sequence_logprobs.remote(prompt, continuation))
        assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp)) < 2e-3  # rank 0's weights reached vLLM
        assert ray.get(actors.learner.policy_version.remote()) == 1
    finally:
        stop_actors(actors)
    run_dir = tmp_path / "tiny_test"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [m["update"] for m in metrics] == [1]
    # both ranks' shares were trained on: the merged counts are the whole batch's
    assert all(m["learner/num_samples"] == config.rollout.group_size * config.train.groups_per_update
               for m in metrics)
    assert (run_dir / "checkpoints" / "update_000001" / "learner_state").is_dir()
