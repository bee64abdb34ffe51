"""Actor roles as plain classes (no Ray): rollout worker, reward and reference services, wiring helpers."""

import threading

import pytest

from cdra_ray.actors.reference_service import ReferenceService
from cdra_ray.actors.reward_service import RewardService
from cdra_ray.actors.rollout_worker import RolloutWorker
from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.messages import Scenario, StepScore
from cdra_ray.models.tiny import train_tiny_tokenizer
from cdra_ray.rewards.base import RewardMetrics, RewardOutput

RESPONSE = "Step 1: You avoid spice.\nStep 2: Try a mild curry.\n"


class ScriptedEngine:
    """Answers every prompt with RESPONSE; records calls and the weights it was given."""

    def __init__(self):
        self._tokenizer = train_tiny_tokenizer()
        self.calls: list[tuple[int, SamplingSettings]] = []
        self.loaded: list[dict] = []

    @property
    def tokenizer(self):
        return self._tokenizer

    def generate(self, prompts, settings):
        self.calls.append((len(prompts), settings))
        ids = self._tokenizer.encode(RESPONSE, add_special_tokens=False)
        return [[Completion(RESPONSE, list(ids), [-0.5] * len(ids), "stop") for _ in range(settings.n)]
                for _ in prompts]

    def sequence_logprobs(self, prompt_ids, continuation_ids):
        return [-1.0] * len(continuation_ids)

    def load_weights(self, named_tensors):
        self.loaded.append(dict(named_tensors))


def _worker(engine, **kwargs):
    return RolloutWorker(engine, group_size=3, max_new_tokens=32, max_wait_s=0.0, **kwargs)


class FakeClock:
    """Stands in for a module's ``time``: ``perf_counter`` reads a clock the test advances by hand."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_rollout_worker_returns_segmented_groups_tagged_with_the_policy_version(monkeypatch):
    import cdra_ray.actors.rollout_worker as rollout_module

    clock = FakeClock()
    monkeypatch.setattr(rollout_module, "time", clock)
    engine = ScriptedEngine()
    original = engine.generate

    def generate_for_2_5_seconds(prompts, settings):
        clock.now += 2.5
        return original(prompts, settings)

    engine.generate = generate_for_2_5_seconds
    worker = _worker(engine)
    group = worker.generate_group(Scenario("u1", "I avoid spicy food.", "What should I cook?"))
    assert group.size == 3 and group.policy_version == 0
    assert engine.calls[0][1].n == 3
    # two steps: "Step 1: ..." and "Step 2: ...", spans cover the text without gaps
    spans = group.step_spans[0]
    assert len(spans) == 2 and spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == len(RESPONSE)
    steps = group.token_steps[0]
    assert len(steps) == len(group.samples[0].response_token_ids)
    assert steps == sorted(steps) and set(steps) == {0, 1}
    assert group.timings["generate"] == 2.5  # the engine call's duration, all of it this group's
    assert worker.load_weights({"w": 1}, policy_version=4) == 4
    assert engine.loaded == [{"w": 1}]
    assert worker.generate_group(Scenario("u2", "p", "q", index=1)).policy_version == 4


def test_rollout_worker_sampling_seed_changes_with_version_and_scenario():
    engine = ScriptedEngine()
    worker = _worker(engine, seed=7)
    worker.generate_group(Scenario("a", "p", "q", index=0))
    worker.generate_group(Scenario("b", "p", "q", index=1))
    worker.load_weights({}, policy_version=1)
    worker.generate_group(Scenario("a", "p", "q", index=0))
    seeds = [settings.seed for _, settings in engine.calls]
    assert len(set(seeds)) == 3


def test_weight_load_waits_for_a_running_batch():
    engine = ScriptedEngine()
    worker = _worker(engine)
    order = []
    gate = threading.Event()
    original = engine.generate

    def slow_generate(prompts, settings):
        order.append("generate-start")
        gate.wait(5)
        order.append("generate-end")
        return original(prompts, settings)

    engine.generate = slow_generate
    t = threading.Thread(target=worker.generate_group, args=(Scenario("u", "p", "q"),))
    t.start()
    for _ in range(500):  # until the batch is generating (at most ~5 s)
        if order:
            break
        threading.Event().wait(0.01)
    assert order == ["generate-start"], "the batch never started generating"
    loader = threading.Thread(target=lambda: (worker.load_weights({}, 1), order.append("loaded")))
    loader.start()
    gate.set()
    t.join()
    loader.join()
    assert order == ["generate-start", "generate-end", "loaded"]


class ConstantReward:
    def score_groups(self, groups):
        return [RewardOutput([[StepScore(s, e, 0.5) for s, e in spans] for spans in g.step_spans],
                             RewardMetrics(requests=2, parsed_constrained=2)) for g in groups]


def test_reward_service_attaches_scores_and_accumulates_metrics(monkeypatch):
    import cdra_ray.actors.reward_service as reward_module

    group = _worker(ScriptedEngine()).generate_group(Scenario("u", "p", "q"))
    clock = FakeClock()
    monkeypatch.setattr(reward_module, "time", clock)

    class SlowConstantReward(ConstantReward):
        def score_groups(self, groups):
            clock.now += 1.5
            return super().score_groups(groups)

    service = RewardService(SlowConstantReward(), max_wait_s=0.0)
    scored = service.score_group(group)
    assert [len(s) for s in scored.step_scores] == [2, 2, 2]
    assert scored.timings["reward"] == 1.5
    metrics = service.metrics()
    assert metrics["reward/requests"] == 2.0 and metrics["reward/parse_rate"] == 1.0


def test_reference_service_stores_per_token_logprobs():
    class Reference:
        def logprobs(self, groups):
            return [[[-0.25] * len(s.response_token_ids) for s in g.samples] for g in groups]

    group = _worker(ScriptedEngine()).generate_group(Scenario("u", "p", "q"))
    annotated = ReferenceService(Reference(), max_wait_s=0.0).annotate_group(group)
    assert [len(lp) for lp in annotated.ref_logprobs] == [len(s.response_token_ids) for s in group.samples]
    assert annotated.ref_logprobs[0][0] == -0.25


def test_nccl_weight_sync_is_rejected_on_cpu():
    from cdra_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.weight_sync=nccl"):
        load_config("cpu_demo", ["rollout.weight_sync=nccl"])
    config = load_config("paper_qwen7b_4gpu", ["rollout.weight_sync=nccl"])
    assert config.rollout.weight_sync == "nccl"


def test_wiring_builds_engine_options_and_actor_environments():
    from cdra_ray.actors.constructors import engine_options
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.config import load_config

    config = load_config("paper_qwen7b_4gpu", ["rollout.weight_sync=nccl"])
    gpu = engine_options("vllm", config, kv_cache_gb=2, max_model_len=4096, weight_sync="nccl")
    assert gpu.weight_transfer_config == {"backend": "nccl"} and gpu.worker_extension_cls.endswith("Extension")
    assert gpu.tensor_parallel_size == 1 and gpu.dtype == "bfloat16"
    cpu = engine_options("vllm", load_config("cpu_demo"), kv_cache_gb=2, max_model_len=2048)
    assert "weight_transfer_config" not in cpu.keywords() and cpu.dtype == "auto"  # cpu_demo's model.dtype
    assert engine_options("hf", load_config("cpu_demo"), kv_cache_gb=2, max_model_len=2048,
                          dtype="bfloat16").dtype == "bfloat16"  # reward.dtype overrides it
    judge = engine_options("vllm", load_config("cpu_demo"), kv_cache_gb=2, max_model_len=2048, block_size=32)
    assert judge.keywords()["block_size"] == 32 and "block_size" not in cpu.keywords()
    env = actor_env(2.0, "vllm", 2.0, "cpu")
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "2"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) >= 1 << 30  # large tensors stay in the heap between steps
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in actor_env(1.0, "vllm", 2.0, "cuda")


def test_compile_and_speculative_decoding_reach_the_vllm_engines():
    from cdra_ray.actors.constructors import reward_engine_spec, rollout_engine_spec
    from cdra_ray.config import ConfigError, load_config

    plain = load_config("cpu_demo")
    assert "speculative_config" not in reward_engine_spec(plain, "/m").options.keywords()
    assert rollout_engine_spec(plain, "/m").options.keywords()["enforce_eager"] is True
    config = load_config("cpu_demo", ["reward.speculative_tokens=3", "reward.enforce_eager=false",
                                      "rollout.enforce_eager=false"])
    judge = reward_engine_spec(config, "/m").options.keywords()
    assert judge["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 3,
                                           "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    assert "speculative_tokens" not in judge and judge["enforce_eager"] is False
    policy = rollout_engine_spec(config, "/m").options.keywords()
    assert policy["enforce_eager"] is False and "speculative_config" not in policy  # the judge's setting only
    with pytest.raises(ConfigError, match="reward.speculative_tokens"):
        load_config("cpu_demo", ["reward.speculative_tokens=-1"])
    with pytest.raises(ConfigError, match="only reward.engine=vllm"):
        load_config("tiny_test", ["reward.speculative_tokens=2", "reward.engine=hf"])


def test_openai_judge_options_come_from_the_reward_config():
    from cdra_ray.actors.constructors import engine_options
    from cdra_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="reward.base_url"):
        load_config("cpu_demo", ["reward.engine=openai"])
    config = load_config("cpu_demo", ["reward.engine=openai", "reward.base_url=http://127.0.0.1:9/v1",
                                      "reward.served_model=judge", "reward.max_retries=5"])
    options = engine_options("openai", config, kv_cache_gb=2, max_model_len=4096)
    assert options.base_url == "http://127.0.0.1:9/v1" and options.model == "judge"
    assert options.max_retries == 5 and options.api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize("kind", ["pers_genprm", "genrm", "rubric_rm", "tts", "scalar_rm", "prm", "rule"])
def test_every_reward_kind_gets_options_its_constructor_accepts(kind):
    import inspect

    from cdra_ray.actors.constructors import reward_model
    from cdra_ray.config import load_config
    from cdra_ray.registry import options_dict

    config = load_config("cpu_demo", [f"reward.kind={kind}", "rollout.max_steps=3", "reward.tts_samples=3"])
    entry, options = reward_model(config)
    accepted = inspect.signature(entry.load()).parameters
    assert set(options_dict(options)) <= set(accepted), set(options_dict(options)) - set(accepted)
    if kind in ("pers_genprm", "prm"):
        assert options.max_steps == 3  # rollout.max_steps reaches the step scorers
    if kind == "tts":
        assert options.samples == 3
