"""The served reward's wire formats, config checks and record scorer, without Ray or HTTP."""

from __future__ import annotations

import json
import re

import pytest

from cdra_ray.config import ConfigError, load_config
from cdra_ray.config.serve import DEFAULT_PREFERENCE_TEMPLATE
from cdra_ray.data.prompts import inference_messages
from cdra_ray.messages import Scenario, StepScore
from cdra_ray.rewards.base import RewardMetrics, RewardOutput
from cdra_ray.serving.protocol import (
    BadRequest,
    ScoreRecord,
    aggregate_scores,
    decode_json_body,
    get_reward_reply,
    parse_get_reward,
    parse_score_steps,
    record_result,
    split_response,
)

TEMPLATE = re.compile(DEFAULT_PREFERENCE_TEMPLATE)
P, Q = "I am vegan and on a tight budget.", "What should I cook for a dinner party?"
RESPONSE = "Step 1: The user is vegan.\nStep 2: Suggest a lentil curry."


def plain_prompt(preference: str = P, query: str = Q) -> str:
    """The policy prompt as rendered for a tokenizer without a chat template (data/prompts.py)."""
    messages = inference_messages(Scenario(uid="x", preference=preference, query=query))
    return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:\n"


# ------------------------------------------------------------------------------------------ OpenRLHF body
def test_openrlhf_body_with_the_preference_read_from_the_prompt():
    prompt = plain_prompt()
    records = parse_get_reward({"query": [prompt + RESPONSE + "<|im_end|>"], "prompts": [prompt], "labels": [None]},
                               TEMPLATE, max_records=8, strip_suffixes=["<|im_end|>"])
    assert records == [ScoreRecord(preference=P, query=Q, response=RESPONSE)]


def test_openrlhf_body_with_a_preferences_field():
    prompt = "Plan my week."  # no preference in the prompt at all
    records = parse_get_reward({"query": [prompt + " Step 1: rest."], "prompts": [prompt],
                                "preferences": ["I hate mornings."]}, TEMPLATE, max_records=8)
    assert records == [ScoreRecord(preference="I hate mornings.", query="Plan my week.", response=" Step 1: rest.")]


def test_default_template_reads_the_smollm2_chat_template():
    from cdra_ray.models.embedded import smollm2_dir

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()), local_files_only=True)
    except Exception as err:  # the demo model was never converted on this machine
        pytest.skip(f"SmolLM2 tokenizer not available: {err}")
    messages = inference_messages(Scenario(uid="x", preference=P, query="Two lines?\nSecond line."))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    [record] = parse_get_reward({"query": [prompt + RESPONSE + "<|im_end|>\n"], "prompts": [prompt]}, TEMPLATE,
                                max_records=8, strip_suffixes=["<|im_end|>"])
    assert (record.preference, record.query, record.response) == (P, "Two lines?\nSecond line.", RESPONSE)


def test_a_template_without_a_query_group_keeps_the_whole_prompt():
    template = re.compile(r"\[pref: (?P<preference>[^\]]+)\]")
    [record] = parse_get_reward({"query": ["[pref: tea] Hi? Step 1: x"], "prompts": ["[pref: tea] Hi?"]}, template,
                                max_records=8)
    assert (record.preference, record.query, record.response) == ("tea", "[pref: tea] Hi?", " Step 1: x")


def test_split_response_strips_repeated_end_markers_and_tolerates_a_leading_bos():
    assert split_response("<s>ab c</s><pad>", "ab", ["</s>", "<pad>"]) == " c"
    assert split_response("xyz", "ab") is None


@pytest.mark.parametrize("body, field, status", [
    ({"prompts": ["p"]}, "query", 400),
    ({"query": "p r", "prompts": ["p"]}, "query", 400),
    ({"query": ["p r", 3], "prompts": ["p", "p"]}, "query[1]", 400),
    ({"query": ["p r"]}, "prompts", 400),
    ({"query": ["p r", "p s"], "prompts": ["p"]}, "prompts", 400),
    ({"query": ["p r"], "prompts": ["p"], "labels": [1, 2]}, "labels", 400),
    ({"query": ["p r"], "prompts": ["p"], "preferences": ["a", "b"]}, "preferences", 400),
    ({"query": ["p r"], "prompts": ["p"], "preferences": [" "]}, "preferences[0]", 400),
    ({"query": ["zzz"], "prompts": ["p"], "preferences": ["a"]}, "query[0]", 400),
    ({"query": ["p r"], "prompts": ["p"]}, "prompts[0]", 400),  # no preference anywhere
    ({"query": [], "prompts": []}, "query", 400),
    ({"query": ["p r"] * 9, "prompts": ["p"] * 9, "preferences": ["a"] * 9}, "query", 413),
])
def test_bad_openrlhf_bodies_name_their_field(body, field, status):
    with pytest.raises(BadRequest) as caught:
        parse_get_reward(body, TEMPLATE, max_records=8)
    assert (caught.value.field, caught.value.status) == (field, status)
    assert caught.value.to_json()["detail"].startswith(field + ":")


# ------------------------------------------------------------------------------------------ native body and bytes
def test_native_records():
    body = {"records": [{"preference": P, "query": Q, "response": RESPONSE}]}
    assert parse_score_steps(body, max_records=4) == [ScoreRecord(P, Q, RESPONSE)]


@pytest.mark.parametrize("body, field", [
    ({}, "records"),
    ({"records": {"preference": P}}, "records"),
    ({"records": ["x"]}, "records[0]"),
    ({"records": [{"preference": P, "query": Q}]}, "records[0].response"),
    ({"records": [{"preference": P, "query": 5, "response": "r"}]}, "records[0].query"),
    ({"records": [{"preference": "", "query": Q, "response": "r"}]}, "records[0].preference"),
])
def test_bad_native_bodies_name_their_field(body, field):
    with pytest.raises(BadRequest) as caught:
        parse_score_steps(body, max_records=4)
    assert caught.value.field == field and caught.value.status == 400


@pytest.mark.parametrize("raw, status, words", [
    (b"x" * 101, 413, "max_body_bytes=100"),
    (b'{"query": ["\xff"]}', 400, "UTF-8"),
    (b'{"query": ', 400, "JSON"),
    (b"[1, 2]", 400, "JSON object"),
])
def test_bad_bodies(raw, status, words):
    with pytest.raises(BadRequest) as caught:
        decode_json_body(raw, max_body_bytes=100)
    assert caught.value.field == "body" and caught.value.status == status and words in caught.value.message


def test_decode_json_body_accepts_utf8():
    assert decode_json_body(json.dumps({"p": "café"}).encode(), 100) == {"p": "café"}


# ------------------------------------------------------------------------------------------ replies
def test_aggregates_by_hand():
    assert aggregate_scores([0.5, -0.25, None, 1.0], "mean") == pytest.approx(1.25 / 3)
    assert aggregate_scores([0.5, -0.25, None, 1.0], "sum") == pytest.approx(1.25)
    assert aggregate_scores([None, None], "mean") is None


def test_unparsed_steps_are_null_or_flagged_defaults_never_a_silent_zero():
    steps = [StepScore(0, 5, 0.6, "good"), StepScore(5, 9, 0.0, "garbled", parsed=False), StepScore(9, 12, -0.2)]
    null = record_result(steps, aggregate="mean", unparsed="null")
    assert null.scores == [0.6, None, -0.2] and null.reward == pytest.approx(0.2)
    assert null.outcomes == ["parsed", "unparsed", "parsed"]
    default = record_result(steps, aggregate="sum", unparsed="default")
    assert default.scores == [0.6, 0.0, -0.2] and default.reward == pytest.approx(0.4)
    assert default.outcomes[1] == "unparsed"
    nothing = record_result([StepScore(0, 3, 0.0, "", parsed=False)], aggregate="mean", unparsed="null")
    reply = get_reward_reply([null, nothing])
    assert reply["rewards"] == [pytest.approx(0.2), None] and reply["scores"] == reply["rewards"]
    assert reply["step_rewards"] == [[0.6, None, -0.2], [None]]
    assert reply["critiques"][0] == ["good", "garbled", ""]
    assert reply["extra_logs"] == {"prm_steps": [3, 1], "prm_unparsed_steps": [1, 1]}
    assert reply["counts"] == {"responses": 2, "steps": 4, "unparsed_steps": 2, "parse_rate": 0.5}


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("override, key", [
    ("serve.aggregate=max", "serve.aggregate"),
    ("serve.unparsed=zero", "serve.unparsed"),
    ("serve.max_batch_size=0", "serve.max_batch_size"),
    ("serve.max_ongoing_requests=4", "serve.max_ongoing_requests"),  # under max_batch_size 8
    ("serve.min_replicas=1", "serve.min_replicas"),  # without max_replicas
    ("serve.port=70000", "serve.port"),
    ("serve.route_prefix=reward", "serve.route_prefix"),
    ("serve.preference_template=no_group", "serve.preference_template"),
    ("serve.preference_template=(unclosed", "serve.preference_template"),
])
def test_serve_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("serve_tiny", [override])


def test_autoscaling_bounds_become_serve_options():
    from cdra_ray.serving.launch import deployment_options

    fixed = deployment_options(load_config("serve_tiny"))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["num_cpus"] == 1
    assert fixed["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    scaled = deployment_options(load_config("serve_tiny", ["serve.min_replicas=1", "serve.max_replicas=3"]))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2.0}


# ------------------------------------------------------------------------------------------ record scorer
class EchoModel:
    """Scores each step by its length / 100, unparsed when the step mentions 'garble'; counts its calls."""

    def __init__(self):
        self.calls = []

    def score_groups(self, groups):
        from cdra_ray.algorithms.steps import segment_steps

        self.calls.append([g.scenario.preference for g in groups])
        outputs = []
        for g in groups:
            text = g.samples[0].response_text
            spans = segment_steps(text, None)
            scores = [StepScore(s, e, (e - s) / 100, f"{g.scenario.query}|{text[s:e]}",
                                parsed="garble" not in text[s:e]) for s, e in spans]
            outputs.append(RewardOutput(step_scores=[scores], metrics=RewardMetrics(requests=len(scores))))
        return outputs


def test_record_scorer_batches_requests_into_one_model_call_and_splits_them_back():
    from cdra_ray.actors.reward_service import RewardService
    from cdra_ray.serving.scorer import RecordScorer

    model = EchoModel()
    scorer = RecordScorer(RewardService(model), aggregate="sum", unparsed="null")
    first = [ScoreRecord("a", "q1", "Step 1: abc\nStep 2: garble")]
    second = [ScoreRecord("b", "q2", "Step 1: x"), ScoreRecord("c", "q3", "one step")]
    out = scorer.score_batches([first, second])
    assert model.calls == [["a", "b", "c"]]  # one model call for both requests
    assert [len(o) for o in out] == [1, 2]
    [r1], [r2, r3] = out
    assert r1.spans == [(0, 12), (12, 26)] and r1.scores == [0.12, None] and r1.reward == pytest.approx(0.12)
    assert r1.critiques[0] == "q1|Step 1: abc\n" and r1.outcomes == ["parsed", "unparsed"]
    assert r2.reward == pytest.approx(0.09) and r3.reward == pytest.approx(0.08)
    metrics = scorer.metrics()
    assert metrics["serve/model_calls"] == 1 and metrics["serve/records"] == 3 and metrics["reward/requests"] == 4


def test_serve_reward_command_refuses_a_bad_key_before_anything_starts(capsys):
    from cdra_ray.cli import main

    assert main(["serve-reward", "--config", "serve_tiny", "serve.unparsed=zero"]) == 2
    assert "serve.unparsed='zero'" in capsys.readouterr().err


def test_protocol_client_and_launcher_import_no_heavy_package():
    import subprocess
    import sys

    probe = ("import cdra_ray.serving.protocol, cdra_ray.serving.launch, cdra_ray.client, cdra_ray.config.serve, sys; "
             "print(' '.join(m for m in sys.modules if '.' not in m))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert set(out.stdout.split()) & {"torch", "vllm", "deepspeed", "ray", "transformers", "fastapi"} == set()
