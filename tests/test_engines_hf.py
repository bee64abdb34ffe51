"""The transformers engine on a tiny random Llama: decoding, log-probs, constraints and weight loading."""

import pytest
import regex
import torch

from cdra_ray.engines.base import GenerationEngine, SamplingSettings
from cdra_ray.engines.hf_engine import HFEngine
from cdra_ray.models.tiny import build_tiny_model

SCORE = r"SCORE: -?(0\.[0-9]|1\.0)"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("hf_engine") / "tiny", seed=0)


@pytest.fixture(scope="module")
def engine(model_dir):
    return HFEngine(model_dir, seed=0)


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    texts = ["I love spicy food. What should I cook?", "Short answers please.", "Step 1:"]
    return [
        tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in texts
    ]


@pytest.fixture(scope="module")
def prompt_ids(engine, prompts):
    return [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _reference_greedy(model, ids, steps):
    """Greedy decoding by full forward passes, no cache and no padding: the independent reference."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
    return out


def test_satisfies_the_protocol(engine):
    assert isinstance(engine, GenerationEngine)


def test_greedy_matches_uncached_reference_and_copies_n(engine, prompt_ids):
    results = engine.generate(prompt_ids, SamplingSettings(n=3, temperature=0, max_new_tokens=12))
    assert [len(group) for group in results] == [3, 3, 3]
    for ids, group in zip(prompt_ids, results):
        expected = _reference_greedy(engine.model, ids, 12)
        assert all(c.token_ids == expected for c in group)
        assert all(c.finish_reason == "length" for c in group)
        # incremental detokenization (as vLLM): a trailing incomplete UTF-8 sequence is held back, not shown as U+FFFD
        assert group[0].text == engine.tokenizer.decode(expected, skip_special_tokens=True).rstrip("\ufffd")


def test_batching_and_chunking_do_not_change_greedy_output(model_dir, engine, prompt_ids):
    settings = SamplingSettings(temperature=0, max_new_tokens=10)
    together = engine.generate(prompt_ids, settings)
    alone = [engine.generate([ids], settings)[0] for ids in prompt_ids]
    one_row_batches = HFEngine(model_dir, max_batch_size=1).generate(prompt_ids, settings)
    assert [g[0].token_ids for g in together] == [g[0].token_ids for g in alone]
    assert [g[0].token_ids for g in together] == [g[0].token_ids for g in one_row_batches]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_logprobs_equal_sequence_logprobs(engine, prompt_ids, temperature, top_p):
    # raw log-probs (vLLM's default logprobs_mode): independent of temperature and top-p
    settings = SamplingSettings(n=3, temperature=temperature, top_p=top_p, max_new_tokens=16, seed=11)
    for ids, group in zip(prompt_ids, engine.generate(prompt_ids, settings)):
        for completion in group:
            assert len(completion.logprobs) == len(completion.token_ids) == 16
            scored = engine.sequence_logprobs(ids, completion.token_ids)
            assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(scored), atol=1e-4)


def test_seed_reproduces_and_differs(engine, prompt_ids):
    def sample(seed):
        settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=16, seed=seed)
        return [[c.token_ids for c in g] for g in engine.generate(prompt_ids, settings)]

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)
    first = sample(5)[0]
    assert len({tuple(t) for t in first}) > 1  # the n samples of one prompt differ from each other


def test_tiny_top_p_is_greedy(engine, prompt_ids):
    greedy = engine.generate(prompt_ids, SamplingSettings(temperature=0, max_new_tokens=8))
    nucleus = engine.generate(prompt_ids, SamplingSettings(temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=1))
    assert [g[0].token_ids for g in greedy] == [g[0].token_ids for g in nucleus]


def test_stop_string_cuts_text_and_keeps_tokens(engine, prompt_ids):
    tok = engine.tokenizer
    greedy = engine.generate(prompt_ids[:1], SamplingSettings(temperature=0, max_new_tokens=20))[0][0]
    # a stop string = the clean ASCII text of one later greedy token
    k = next(
        i
        for i in range(3, 20)
        if tok.decode(greedy.token_ids[i : i + 1]).strip().isascii() and tok.decode(greedy.token_ids[i : i + 1]).strip()
    )
    stop = tok.decode(greedy.token_ids[k : k + 1]).strip()
    full_text = greedy.text
    cut = full_text.find(stop)
    result = engine.generate(prompt_ids[:1], SamplingSettings(temperature=0, max_new_tokens=20, stop=(stop,)))[0][0]
    assert result.finish_reason == "stop"
    assert result.text == full_text[:cut]
    assert result.token_ids == greedy.token_ids[: len(result.token_ids)]
    assert stop in tok.decode(result.token_ids) and stop not in tok.decode(result.token_ids[:-1])


def test_regex_output_always_matches(engine, prompt_ids):
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3, regex=SCORE)
    eos = engine.tokenizer.eos_token_id
    for group in engine.generate(prompt_ids, settings):
        for completion in group:
            assert regex.fullmatch(SCORE, completion.text), completion.text
            assert completion.finish_reason == "stop"
            assert completion.token_ids[-1] == eos
            # constrained log-probs are over the allowed tokens: the forced "E" after "SCOR"-like prefixes and
            # the EOS after a complete, non-extendable score have probability 1
            assert completion.logprobs[-1] == pytest.approx(0.0, abs=1e-6)
            assert all(lp <= 1e-6 for lp in completion.logprobs)


def test_regex_greedy_with_length_limit(engine, prompt_ids):
    # 3 tokens cannot spell a whole score: the completion is a viable prefix, cut by length
    result = engine.generate(prompt_ids[:1], SamplingSettings(temperature=0, max_new_tokens=3, regex=SCORE))[0][0]
    assert result.finish_reason == "length"
    assert regex.fullmatch(SCORE, result.text, partial=True)


def test_load_weights_changes_then_restores(model_dir, prompt_ids):
    engine = HFEngine(model_dir)
    settings = SamplingSettings(temperature=0, max_new_tokens=10)
    before = [g[0].token_ids for g in engine.generate(prompt_ids, settings)]
    original = {k: v.clone() for k, v in engine.model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    perturbed = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    engine.load_weights(perturbed.items())
    assert torch.equal(engine.model.state_dict()["model.norm.weight"], perturbed["model.norm.weight"])
    changed = [g[0].token_ids for g in engine.generate(prompt_ids, settings)]
    assert changed != before
    engine.load_weights(original.items())
    assert [g[0].token_ids for g in engine.generate(prompt_ids, settings)] == before


def test_load_weights_rejects_bad_updates_before_copying(model_dir):
    engine = HFEngine(model_dir)
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    norm_before = state["model.norm.weight"].clone()
    changed = {k: v + 1.0 for k, v in state.items()}
    with pytest.raises(ValueError, match=r"unknown names \['model.nrom.weight'\]"):
        engine.load_weights({**changed, "model.nrom.weight": torch.zeros(64)}.items())
    with pytest.raises(ValueError, match=r"missing names \['model.norm.weight'\]"):
        engine.load_weights({k: v for k, v in changed.items() if k != "model.norm.weight"}.items())
    with pytest.raises(ValueError, match="shape mismatches"):
        engine.load_weights({**changed, "model.norm.weight": torch.zeros(65)}.items())
    assert torch.equal(engine.model.state_dict()["model.norm.weight"], norm_before)


def test_sequence_logprobs_edges(engine, prompt_ids):
    assert engine.sequence_logprobs(prompt_ids[0], []) == []
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        engine.sequence_logprobs([], [1, 2])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([prompt_ids[0], []], SamplingSettings())
