"""The Table 3 reward variants (scalar_rm, genrm, prm, rubric_rm, tts, and pers_genprm) behind one contract.

Real groups from a tiny random Llama (sampled through the transformers engine, plus two hand-written multi-step
responses); tiny sequence-/token-classification models saved to a temp dir for the score-head variants; a
scripted fake engine where exact numbers matter (aggregation, zero-advantage comparison)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from cdra_ray.algorithms.advantages import compute_advantages, zero_advantage_rate
from cdra_ray.algorithms.token_steps import map_tokens_to_steps
from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.messages import Group, Sample, Scenario
from cdra_ray.rewards import REWARD_MODELS, PersGenPRM, RewardModel, create_reward_model
from cdra_ray.rewards.genrm import GenRM
from cdra_ray.rewards.judge import aggregate_scores
from cdra_ray.rewards.prm import PRM, build_prm_example, init_prm_from_causal_lm, prm_step_loss, step_read_positions
from cdra_ray.rewards.rubric_rm import RubricRM
from cdra_ray.rewards.scalar_rm import ScalarRM
from cdra_ray.rewards.span_align import align_group_token_steps, remap_token_steps
from cdra_ray.rewards.tts import TTSGenRM

PREF, QUERY = "I avoid sugar.", "Suggest a dessert."
HANDMADE = [
    "Step 1: The user avoids sugar, likely for health.\nStep 2: Suggest baked apples with cinnamon.",
    "Step 1: The user avoids sugar.\nStep 2: Think about fruit.\nStep 3: Suggest a chocolate cake.",
]
OUTCOME_KINDS = ("scalar_rm", "genrm", "rubric_rm", "tts")
PROCESS_KINDS = ("prm", "pers_genprm")


# ----------------------------------------------------------------------------------------------- fixtures
def _head_model_dir(path, head: str, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaForTokenClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_labels=1,
                         initializer_range=0.2, pad_token_id=tokenizer.pad_token_id)
    cls = LlamaForSequenceClassification if head == "sequence" else LlamaForTokenClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from cdra_ray.models.tiny import build_tiny_model, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("variants")
    tokenizer = train_tiny_tokenizer()
    return {
        "causal": build_tiny_model(root / "causal", hidden=64, heads=2, seed=3, tokenizer=tokenizer),
        "sequence": _head_model_dir(root / "rm", "sequence", tokenizer, seed=1),
        "token": _head_model_dir(root / "prm", "token", tokenizer, seed=2),
    }


@pytest.fixture(scope="module")
def engine(dirs):
    from cdra_ray.engines.hf_engine import HFEngine

    return HFEngine(dirs["causal"], seed=0)


@pytest.fixture(scope="module")
def real_group(engine):
    """Two responses sampled by the tiny policy + two hand-written multi-step ones, segmented as in a rollout."""
    from cdra_ray.actors.rollout_worker import segment_group
    from cdra_ray.data.prompts import render_prompt_ids

    tok = engine.tokenizer
    scenario = Scenario(uid="s0", preference=PREF, query=QUERY)
    prompt = render_prompt_ids(tok, scenario, 1024)
    sampled = engine.generate([prompt], SamplingSettings(n=2, temperature=1.0, max_new_tokens=12, seed=0))[0]
    samples = [Sample(c.text, list(c.token_ids), list(c.logprobs), c.finish_reason) for c in sampled]
    for text in HANDMADE:
        ids = tok.encode(text, add_special_tokens=False)
        samples.append(Sample(text, ids, [0.0] * len(ids)))
    group = Group(scenario=scenario, prompt_token_ids=prompt, samples=samples, policy_version=0)
    return segment_group(group, tok, None)


def build(kind: str, dirs, engine):
    options = {"critique_max_tokens": 6, "min_requests_for_floor": 1}
    if kind == "scalar_rm":
        return create_reward_model(kind, model_dir=str(dirs["sequence"]), score_transform="tanh")
    if kind == "prm":
        return create_reward_model(kind, model_dir=str(dirs["token"]))
    if kind == "tts":
        return create_reward_model(kind, engine=engine, samples=2, temperature=1.0, seed=0, **options)
    return create_reward_model(kind, engine=engine, **options)


# ----------------------------------------------------------------------------------------------- one contract
def test_every_table3_kind_is_registered():
    assert set(OUTCOME_KINDS + PROCESS_KINDS) <= set(REWARD_MODELS)
    with pytest.raises(ValueError, match=r"unknown reward kind 'grm'.*genrm.*prm.*rubric_rm.*scalar_rm.*tts"):
        create_reward_model("grm")


@pytest.mark.parametrize("kind", OUTCOME_KINDS + PROCESS_KINDS)
def test_each_variant_scores_a_real_group_through_the_contract(kind, dirs, engine, real_group):
    from cdra_ray.learner.batch import build_batch

    model = build(kind, dirs, engine)
    assert isinstance(model, RewardModel)
    (out,) = model.score_groups([real_group])
    texts = [s.response_text for s in real_group.samples]
    spans = [[(s.start, s.end) for s in scores] for scores in out.step_scores]
    if kind in OUTCOME_KINDS:  # one whole-response span each
        assert spans == [[(0, len(t))] for t in texts]
    else:  # one score per segmented step: the hand-written responses have 2 and 3 steps
        assert spans == [[tuple(x) for x in sp] for sp in real_group.step_spans]
        assert [len(sp) for sp in spans[2:]] == [2, 3]
    for scores in out.step_scores:
        for s in scores:
            assert math.isfinite(s.score) and -1.0 <= s.score <= 1.0 and s.parsed
    assert out.metrics.requests == sum(len(sp) for sp in spans)
    if kind in ("scalar_rm", "prm"):  # nothing is parsed: no parse rate
        assert math.isnan(out.metrics.parse_rate)
    else:  # the constrained phase reads a score even from a random judge
        assert out.metrics.parse_rate == 1.0
    # the learner accepts the scored group once token steps point at the scored spans
    group = dataclasses.replace(real_group, token_steps=align_group_token_steps(real_group, out.step_scores))
    group = out.attach(group)
    batch = build_batch([group])
    assert batch.step_mask.sum(dim=1).tolist() == [len(sp) for sp in spans]


def test_outcome_judges_refuse_options_they_have_no_use_for(engine):
    # the wiring passes max_steps to pers_genprm; an outcome judge must not swallow it silently
    with pytest.raises(TypeError, match="max_steps"):
        GenRM(engine, max_steps=5)
    with pytest.raises(TypeError, match="critique_temperature"):
        TTSGenRM(engine, critique_temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0 when samples > 1"):
        TTSGenRM(engine, samples=3, temperature=0.0)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        TTSGenRM(engine, aggregate="median")


# ----------------------------------------------------------------------------------------------- score heads
def test_scalar_rm_is_batch_invariant_and_reads_the_head(dirs, real_group):
    from cdra_ray.rewards.head_models import render_scoring_input

    one = ScalarRM(dirs["sequence"], batch_size=1)
    many = ScalarRM(dirs["sequence"], batch_size=8)
    a = [s[0].score for s in one.score_groups([real_group])[0].step_scores]
    b = [s[0].score for s in many.score_groups([real_group])[0].step_scores]
    assert a == pytest.approx(b, abs=1e-5)
    ids = render_scoring_input(one.tokenizer, PREF, QUERY, HANDMADE[0]).input_ids
    with torch.no_grad():
        direct = one.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert a[2] == pytest.approx(direct, abs=1e-5)  # identity transform: the raw logit
    assert len(set(round(x, 6) for x in a)) > 1  # different responses, different scores


def test_prm_reads_each_step_end_in_one_forward_per_batch(dirs, real_group):
    model = PRM(dirs["token"], batch_size=8)
    calls = []
    model.model.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
    (out,) = model.score_groups([real_group])
    assert len(calls) == 1  # 4 responses, batch_size 8: one forward gives every step score

    from cdra_ray.rewards.head_models import render_scoring_input

    text = HANDMADE[1]
    spans = [tuple(s) for s in real_group.step_spans[3]]
    inp = render_scoring_input(model.tokenizer, PREF, QUERY, text)
    positions = step_read_positions(inp, spans)
    for (start, end), p in zip(spans, positions):
        k = p - inp.response_start  # the last response token starting inside the step
        assert start <= inp.token_starts[k] < end
        assert k + 1 == len(inp.token_starts) or inp.token_starts[k + 1] >= end
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([inp.input_ids])).logits[0, :, 0]
    expected = [math.tanh(logits[p].item() / 2) for p in positions]  # 2*sigmoid(z) - 1
    assert [s.score for s in out.step_scores[3]] == pytest.approx(expected, abs=1e-5)
    # padding never changes a score
    single = PRM(dirs["token"], batch_size=1).score_groups([real_group])[0]
    assert [s.score for r in single.step_scores for s in r] == pytest.approx(
        [s.score for r in out.step_scores for s in r], abs=1e-5)


def test_score_head_variants_refuse_a_directory_without_a_trained_head(dirs):
    for cls in (ScalarRM, PRM):
        with pytest.raises(ValueError, match=r"no trained score head.*allow_untrained_head"):
            cls(dirs["causal"])
    assert PRM(dirs["causal"], allow_untrained_head=True).model.config.num_labels == 1


def test_a_prm_directory_is_made_from_a_causal_lm_and_trained_on_step_scores(dirs, tmp_path):
    from transformers import AutoModelForTokenClassification

    prm_dir = init_prm_from_causal_lm(dirs["causal"], tmp_path / "prm0")
    steps, targets = ["Step 1: avoid sugar, so fruit. ", "Step 2: chocolate cake."], [0.8, -0.6]
    text = "".join(steps)
    group = Group(Scenario("g", PREF, QUERY), [1], [Sample(text, [1], [0.0])], 0,
                  step_spans=[[(0, len(steps[0])), (len(steps[0]), len(text))]])
    # a zero head scores every step 0 (tanh(0 / 2) = 0) before training
    assert [s.score for s in PRM(prm_dir).score_groups([group])[0].step_scores[0]] == [0.0, 0.0]

    model = AutoModelForTokenClassification.from_pretrained(str(prm_dir), num_labels=1).eval()
    tokenizer = PRM(prm_dir).tokenizer
    ids, positions, scores = build_prm_example(tokenizer, PREF, QUERY, steps, targets)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        logits = model(input_ids=torch.tensor([ids])).logits[..., 0]
        loss = prm_step_loss(logits, torch.tensor([positions]), torch.ones(1, 2, dtype=torch.bool),
                             torch.tensor([scores]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "prm1")
    tokenizer.save_pretrained(tmp_path / "prm1")
    trained = [s.score for s in PRM(tmp_path / "prm1").score_groups([group])[0].step_scores[0]]
    assert trained == pytest.approx(targets, abs=0.1)


# ----------------------------------------------------------------------------------------------- judges, scripted
class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class ScriptedEngine:
    """Replies by phase (regex -> score, a "SCORE" stop -> critique, else free / greedy retry); a list script
    gives the k-th of n completions its k-th entry; a callable gets the prompt text. Records every call."""

    def __init__(self, critique="", score=" 0.5", free="SCORE: 0.1", retry=None):
        self.tokenizer = CharTokenizer()
        self.scripts = {"critique": critique, "score": score, "free": free, "retry": free if retry is None else retry}
        self.calls: list[tuple[str, SamplingSettings, list[str]]] = []

    def generate(self, prompts, settings):
        if settings.regex is not None:
            phase = "score"
        elif any("SCORE" in s.upper() for s in settings.stop):
            phase = "critique"
        else:
            phase = "free" if settings.temperature > 0 or not any(c[0] == "free" for c in self.calls) else "retry"
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.calls.append((phase, settings, texts))
        out = []
        for text in texts:
            script = self.scripts[phase]
            replies = []
            for k in range(settings.n):
                reply = script(text) if callable(script) else script
                reply = reply[k % len(reply)] if isinstance(reply, list) else reply
                for stop in settings.stop:
                    reply = reply.split(stop)[0]
                replies.append(Completion(reply, self.tokenizer.encode(reply), [], "stop"))
            out.append(replies)
        return out

    def sequence_logprobs(self, prompt_ids, continuation_ids):
        raise NotImplementedError

    def load_weights(self, named_tensors):
        raise NotImplementedError


def char_group(uid, texts, index=0):
    """A group whose tokens are characters: token_steps straight from the character spans."""
    from cdra_ray.algorithms.steps import segment_steps

    samples = [Sample(t, [ord(c) for c in t], [0.0] * len(t)) for t in texts]
    spans = [segment_steps(t) for t in texts]
    steps = [map_tokens_to_steps(list(range(len(t))), sp) for t, sp in zip(texts, spans)]
    return Group(Scenario(uid, PREF, QUERY, index), [1, 2], samples, 0, step_spans=spans, token_steps=steps)


def test_aggregation_mean_and_vote_by_hand():
    assert aggregate_scores([0.5, 0.7, -0.3], "mean") == pytest.approx(0.3)  # (0.5 + 0.7 - 0.3) / 3
    # rounded to 0.1: 0.52 -> 0.5, 0.48 -> 0.5, -0.3 -> -0.3: 0.5 wins 2 to 1
    assert aggregate_scores([0.52, 0.48, -0.3], "vote") == 0.5
    # half away from zero: 0.35 -> 0.4, -0.35 -> -0.4
    assert aggregate_scores([0.35, 0.35, 0.1], "vote") == 0.4
    assert aggregate_scores([-0.35], "vote") == -0.4
    # tie 0.2 vs 0.8 (one each), mean 0.5 equidistant -> the lower, 0.2
    assert aggregate_scores([0.2, 0.8], "vote") == 0.2
    # tie 0.2 / 0.9 / 0.8 -> mean 0.633..., nearest is 0.8
    assert aggregate_scores([0.2, 0.9, 0.8], "vote") == 0.8
    assert aggregate_scores([0.24, 0.26], "vote", decimals=0) == 0.0


def test_tts_samples_k_critiques_in_one_call_and_aggregates_them():
    verdicts = {"Good.": " 0.8", "Fine.": " 0.5", "Weak.": " -0.2"}
    engine = ScriptedEngine(critique=["Good.", "Fine.", "Weak.", "Good."],
                            score=lambda t: next(v for k, v in verdicts.items() if t.endswith(k + "\nSCORE:")))
    group = char_group("g", ["Step 1: fruit.", "Step 1: cake."])
    for how, expected in (("mean", (0.8 + 0.5 - 0.2 + 0.8) / 4), ("vote", 0.8)):
        engine.calls.clear()
        out = TTSGenRM(engine, samples=4, temperature=0.9, aggregate=how, cache_size=0).score_groups([group])[0]
        assert [r[0].score for r in out.step_scores] == pytest.approx([expected, expected])
        crit, score = engine.calls
        assert crit[1].n == 4 and crit[1].temperature == 0.9 and len(crit[2]) == 2  # 2 responses, n=4 each
        assert score[1].n == 1 and score[1].temperature == 0.0 and len(score[2]) == 8  # one forced score per sample
        assert out.step_scores[0][0].critique.count("[sample ") == 4
        assert out.metrics.parsed_constrained == 2 and out.metrics.parse_rate == 1.0


def test_rubric_final_score_maps_onto_the_reward_scale():
    # FINAL SCORE 75 -> 75 / 50 - 1 = 0.5; 0 -> -1; 100 -> 1
    for raw, expected in ((" 75", 0.5), (" 0", -1.0), (" 100", 1.0)):
        engine = ScriptedEngine(critique="Reasoning 20/30, discovery 30/40, answer 25/30.", score=raw)
        out = RubricRM(engine).score_groups([char_group("g", ["Step 1: fruit."])])[0]
        assert out.step_scores[0][0].score == pytest.approx(expected)
    phases = [c[0] for c in engine.calls]
    assert phases == ["critique", "score"] and engine.calls[0][1].stop[0] == "FINAL SCORE"
    assert engine.calls[1][2][0].endswith("answer 25/30.\nFINAL SCORE:")


def test_judge_caches_dedups_falls_back_and_defaults():
    group = char_group("g", ["Step 1: fruit.", "Step 1: fruit.", "Step 1: cake."])
    engine = ScriptedEngine(critique="Ok.", score=" 0.3")
    model = GenRM(engine, min_requests_for_floor=1)
    m = model.score_groups([group])[0].metrics
    assert (m.requests, m.deduplicated, m.parsed_constrained) == (3, 1, 2)
    m = model.score_groups([group])[0].metrics  # all three now come from the cache
    assert (m.requests, m.cache_hits, m.generated) == (3, 3, 0)
    # an engine without regex support: the free route parses; nothing readable: retried, then the default
    class NoRegex(ScriptedEngine):
        def generate(self, prompts, settings):
            if settings.regex is not None:
                raise NotImplementedError("no regex here")
            return super().generate(prompts, settings)

    out = GenRM(NoRegex(free="Fine. SCORE: -0.4")).score_groups([group])[0]
    assert [r[0].score for r in out.step_scores] == [-0.4, -0.4, -0.4] and out.metrics.parsed_free == 2
    out = GenRM(NoRegex(free="no number", retry="still none"), default_score=0.1,
                parse_rate_floor=0.0).score_groups([group])[0]
    assert [(r[0].score, r[0].parsed) for r in out.step_scores] == [(0.1, False)] * 3
    assert (out.metrics.defaulted, out.metrics.retried) == (2, 2)


def test_remap_token_steps_to_coarser_scored_spans():
    old = [(0, 5), (5, 9), (9, 12)]
    steps = [0, 0, 1, 1, 2, 2]
    assert remap_token_steps(steps, old, [(0, 12)]) == [0] * 6  # outcome: everything is span 0
    assert remap_token_steps(steps, old, old) == steps
    assert remap_token_steps(steps, old, [(0, 9), (9, 12)]) == [0, 0, 0, 0, 1, 1]  # steps 1+2 merged
    with pytest.raises(ValueError, match="split by the scored spans"):
        remap_token_steps(steps, old, [(0, 3), (3, 12)])


# ----------------------------------------------------------------------------------------------- zero advantage
def _advantages(name, group, step_scores, **options):
    token_steps = align_group_token_steps(group, step_scores)
    width_s = max(len(s) for s in step_scores)
    width_c = max(len(t) for t in token_steps)
    rewards = torch.zeros(group.size, width_s)
    step_mask = torch.zeros(group.size, width_s, dtype=torch.bool)
    steps = torch.zeros(group.size, width_c, dtype=torch.long)
    mask = torch.zeros(group.size, width_c, dtype=torch.bool)
    for i, (scores, ts) in enumerate(zip(step_scores, token_steps)):
        rewards[i, : len(scores)] = torch.tensor([s.score for s in scores])
        step_mask[i, : len(scores)] = True
        steps[i, : len(ts)] = torch.tensor(ts)
        mask[i, : len(ts)] = True
    return compute_advantages(name, rewards, step_mask, steps, mask, **options), mask


def test_outcome_judge_has_more_zero_advantage_groups_than_pers_genprm_on_the_same_groups():
    # Every response reaches the same verdict as a whole (genrm says 0.5 for all), but its steps differ:
    # step rewards 0.8 for a step about fruit, -0.4 otherwise.
    texts = ["Step 1: fruit.\nStep 2: rest.", "Step 1: cake.\nStep 2: fruit.", "Step 1: cake.\nStep 2: rest."]
    groups = [char_group(f"g{k}", texts, index=k) for k in range(3)]
    current = re.compile(r'>\n([^<]*)\n</step>\n\nJudge step', re.S)  # the last step shown is the one judged

    outcome = GenRM(ScriptedEngine(critique="Solid overall.", score=" 0.5")).score_groups(groups)
    process = PersGenPRM(ScriptedEngine(critique="Step noted.", score=lambda t: " 0.8" if "fruit" in
                                        current.search(t).group(1) else " -0.4")).score_groups(groups)
    assert [[s.score for s in r] for r in process[0].step_scores] == [[0.8, -0.4], [-0.4, 0.8], [-0.4, -0.4]]

    adv_o, masks = zip(*(_advantages("grpo", g, o.step_scores) for g, o in zip(groups, outcome)))
    adv_p, _ = zip(*(_advantages("cdpa", g, p.step_scores) for g, p in zip(groups, process)))
    # grpo: rewards (0.5, 0.5, 0.5) -> std 0 -> every advantage 0 in all 3 groups
    # cdpa: at a token of step 1 the rewards are (0.8, -0.4, -0.4) -> nonzero advantages in every group
    rate_outcome, rate_process = zero_advantage_rate(adv_o, masks), zero_advantage_rate(adv_p, masks)
    assert (rate_outcome, rate_process) == (1.0, 0.0)


# ----------------------------------------------------------------------------------------------- config swap
def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("kind", OUTCOME_KINDS + PROCESS_KINDS)
def test_swapping_reward_kind_changes_nothing_else_in_the_resolved_config(kind, repo_root):
    from cdra_ray.config import load_config

    preset = str(repo_root / "configs" / "ablations" / "grpo_grm.yaml")
    base = _flatten(dataclasses.asdict(load_config(preset)))
    swapped = _flatten(dataclasses.asdict(load_config(preset, [f"reward.kind={kind}"])))
    changed = {k for k in base if base[k] != swapped[k]}
    assert changed == ({"reward.kind"} if kind != "genrm" else set())
    assert swapped["reward.kind"] == kind
