"""Placement by Ray resources on a real two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and a second
node on this machine, each a raylet of its own with a custom resource naming its node type).

Rollout and reward are pinned to ``node_b`` and the learner and reference to ``node_a`` through
``rollout.resources`` / ``reward.resources`` / ``learner.resources`` alone (no host names); the test asks every
actor for the Ray node it runs on and trains the tiny model to the end across the two nodes.
"""

import json
import shutil
import tempfile

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.e2e, pytest.mark.slow]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    import os

    from ray.cluster_utils import Cluster

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_ext")))
    temp_dir = tempfile.mkdtemp(prefix="cdra_2n_", dir="/tmp")  # short: Ray's socket paths live under it
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "resources": {"node_a": 10}, "include_dashboard": False, "temp_dir": temp_dir})
    node_b = cluster.add_node(num_cpus=4, resources={"node_b": 10}, temp_dir=temp_dir)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster.head_node.node_id, node_b.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _config(tmp_path, *overrides):
    from cdra_ray.config import load_config

    return load_config("tiny_test", [
        f"run.output_dir={tmp_path}", "run.progress_bar=false", "rollout.engine=hf", "reward.engine=hf",
        "rollout.resources={node_b: 1}", "reward.resources={node_b: 1}", "learner.resources={node_a: 1}",
        *overrides])


def _node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def test_roles_land_on_the_nodes_their_resources_name_and_training_completes(two_nodes, tmp_path):
    from cdra_ray.actors.wiring import reward_replicas, stop_actors
    from cdra_ray.train import build_run

    node_a, node_b = two_nodes
    assert node_a != node_b
    config = _config(tmp_path, "train.total_updates=2", "reward.num_replicas=2", "learner.num_ranks=2")
    driver, actors = build_run(config)  # joins the connected cluster (train.init_ray keeps an existing one)
    try:
        placed = {
            "rollout": {_node_of(w) for w in actors.rollout_workers},
            "reward": {_node_of(r) for r in reward_replicas(actors)},
            "reference": {_node_of(actors.reference)},
            "learner": {_node_of(rank) for rank in actors.learner.ranks},
        }
        summary = driver.run(progress=False)
    finally:
        stop_actors(actors)
    assert placed == {"rollout": {node_b}, "reward": {node_b}, "reference": {node_a}, "learner": {node_a}}
    assert actors.learner.num_ranks == 2  # both ranks' placement bundles asked for node_a
    assert summary["updates"] == config.train.total_updates == 2
    run_dir = tmp_path / "tiny_test"
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["updates"] == 2 and written["actor_restarts"] == {}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [m["update"] for m in metrics] == [1, 2]
    assert metrics[-1]["reward/groups"] == 2  # one group per update, scored on node_b
    assert (run_dir / "checkpoints" / "update_000002" / "policy" / "config.json").is_file()  # written on node_a


def test_a_resource_no_node_offers_is_an_error_naming_the_key(two_nodes, tmp_path):
    from cdra_ray.config import ConfigError
    from cdra_ray.train import build_run

    config = _config(tmp_path, "reward.resources={node_c: 1}")
    with pytest.raises(ConfigError, match=r"reward\.resources\.node_c: the run's actors ask for 1 in total but the "
                                          r"Ray cluster offers 0 \(custom resources it has: \['node_a', 'node_b'\]\)"):
        build_run(config)  # refused before any actor is created (it would wait for node_c forever)
