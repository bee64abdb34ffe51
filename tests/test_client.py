"""The TRL reward-function client against a scripted reward server on loopback (no Ray, no model)."""

from __future__ import annotations

import threading

import pytest

from cdra_ray.client import RewardClient, RewardServiceError
from fake_openai_server import FakeOpenAIServer, Reply

FAST = dict(timeout_s=5.0, max_retries=2, backoff_s=0.01)


def rewards_reply(request, unparsed_every: int = 0):
    """One reward per query: its length / 100, or None for every ``unparsed_every``-th query."""
    queries = request.body["query"]
    rewards = [None if unparsed_every and (i + 1) % unparsed_every == 0 else len(q) / 100
               for i, q in enumerate(queries)]
    return Reply(body={"rewards": rewards, "scores": rewards,
                       "counts": {"steps": 2 * len(queries), "unparsed_steps": sum(r is None for r in rewards)}})


def test_sends_openrlhf_bodies_with_the_preference_column_and_keeps_order_and_nones():
    with FakeOpenAIServer(lambda r: rewards_reply(r, unparsed_every=2)) as server:
        client = RewardClient(server.base_url + "/", batch_size=2, **FAST)
        logged = []
        prompts = ["p0 ", "p1 ", "p2 ", "p3 ", "p4 "]
        completions = ["a", "bb", "ccc", "dddd", "eeeee"]
        out = client(prompts, completions, preference=["x0", "x1", "x2", "x3", "x4"],
                     log_metric=lambda name, value: logged.append((name, value)))
    bodies = sorted((r.body for r in server.requests), key=lambda b: b["prompts"][0])
    assert [r.path for r in server.requests] == ["/get_reward"] * 3
    assert bodies[0] == {"query": ["p0 a", "p1 bb"], "prompts": ["p0 ", "p1 "], "preferences": ["x0", "x1"]}
    assert bodies[2] == {"query": ["p4 eeeee"], "prompts": ["p4 "], "preferences": ["x4"]}
    assert out == [pytest.approx(0.04), None, pytest.approx(0.06), None, pytest.approx(0.08)]  # chunk order kept
    assert logged == [("pers_genprm/unparsed_step_rate", pytest.approx(2 / 10))]
    assert client.__name__ == "pers_genprm"


def test_none_rewards_pass_through_and_chat_messages_become_text():
    with FakeOpenAIServer(lambda r: rewards_reply(r, unparsed_every=2)) as server:
        client = RewardClient(server.base_url, batch_size=8, **FAST)
        prompts = [[{"role": "user", "content": "hi"}]] * 2
        completions = [[{"role": "assistant", "content": "Step 1: a"}], [{"role": "assistant", "content": "b"}]]
        out = client(prompts, completions)
    assert server.requests[0].body == {"query": ["hiStep 1: a", "hib"], "prompts": ["hi", "hi"]}
    assert out == [pytest.approx(0.11), None]
    assert client.last_counts == {"responses": 2, "steps": 4, "unparsed_steps": 1}


def test_concurrency_limit_holds_across_chunks():
    limit, release = 2, threading.Event()

    def respond(request):
        with server.lock:
            if server.in_flight >= limit:
                release.set()
        release.wait(timeout=5)
        return rewards_reply(request)

    with FakeOpenAIServer(respond) as server:
        client = RewardClient(server.base_url, batch_size=1, max_concurrency=limit, **FAST)
        out = client(["p"] * 6, ["r"] * 6)
    assert server.max_in_flight == limit and len(out) == 6


def test_retries_a_503_then_succeeds():
    def respond(request):
        if request.index == 0:
            return Reply(status=503, body={"detail": "busy"})
        return rewards_reply(request)

    with FakeOpenAIServer(respond) as server:
        out = RewardClient(server.base_url, **FAST)(["p"], ["r"])
    assert out == [pytest.approx(0.02)] and len(server.requests) == 2


def test_a_4xx_is_not_retried_and_names_the_field():
    with FakeOpenAIServer(lambda r: Reply(status=400, body={"detail": "prompts[0]: no preference found",
                                                            "field": "prompts[0]"})) as server:
        with pytest.raises(RewardServiceError, match=r"HTTP 400.*prompts\[0\]: no preference") as caught:
            RewardClient(server.base_url, **FAST)(["p"], ["r"])
    assert caught.value.attempts == 1 and len(server.requests) == 1


def test_a_reply_without_one_reward_per_response_is_an_error():
    with FakeOpenAIServer(lambda r: Reply(body={"rewards": [0.1]})) as server:
        with pytest.raises(RewardServiceError, match="one reward per response"):
            RewardClient(server.base_url, **FAST)(["p", "q"], ["r", "s"])
