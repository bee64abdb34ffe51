"""SFT data without any model: record checks, the scenario split, targets that parse back, truncation, the LR
schedule, the example order, the critic metrics, and the SFT prompt == the reward service's prompt."""

from __future__ import annotations

import json
import math

import pytest

from cdra_ray.algorithms.scores import parse_step_score
from cdra_ray.config import ConfigError, load_config
from cdra_ray.data.scenarios import SAMPLES_DIR
from cdra_ray.sft.critic_metrics import average_ranks, critic_report, markdown_table, pairwise_accuracy, spearman
from cdra_ray.sft.data import SFTDataError, load_records, rea_paths, resolve_data_file, split_by_scenario
from cdra_ray.sft.examples import fit_left, format_score, format_target, prm_example
from cdra_ray.sft.trainer import lr_factor, step_indices

REA = SAMPLES_DIR / "deeppref_sample_d_rea.jsonl"
RFT = SAMPLES_DIR / "deeppref_sample_d_rft.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    from cdra_ray.models.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer()


# ----------------------------------------------------------------------------------------------- records
def test_shipped_samples_follow_the_contract():
    rea, rft = load_records(REA, "d_rea"), load_records(RFT, "d_rft")
    assert len(rea) == 60 and len(rft) == 10
    sample = (SAMPLES_DIR / "prefeval_sample.jsonl").read_text().splitlines()
    scenario_ids = {json.loads(line)["id"] for line in sample if line.strip()}
    assert {r.scenario_id for r in rea} == {r.uid for r in rft} <= scenario_ids
    paths = rea_paths(rea)
    assert len(paths) == 20 and all(len(scores) == 3 for _, scores in paths)
    for r in rft:  # the best path is the response, its score the sum of its step scores, the worst is rejected
        best = max((s for last, s in paths if last.scenario_id == r.uid), key=sum)
        assert r.path_score == pytest.approx(sum(best)) and r.rejected_score < r.path_score
        assert r.response == "\n".join(r.steps)


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('{"id": "s/p0/s1", "scenario_id": "s", "preference": "p", "query": "q", "steps": ["a"], "critique": "c", '
     '"score": 1.5}', r"'score'=1.5 lies outside \[-1.0, 1.0\]"),
    ('{"id": "s/p0/s2", "scenario_id": "s", "preference": "p", "query": "q", "steps": ["a"], "critique": "c", '
     '"score": 0.5}', "j = len\\(steps\\) = 1"),
    ('{"id": "s/p0/s1", "scenario_id": "s", "preference": "p", "query": "q", "steps": [""], "critique": "c", '
     '"score": 0.5}', r"steps\[0\]"),
    ('{"id": "s/p0/s1", "scenario_id": "s", "preference": "p", "query": "q", "steps": ["a"], "score": 0.5}',
     "missing field 'critique'"),
    # hostile JSON is refused by the same reader the scenario files use
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ('{"id": "s/p0/s1", "scenario_id": "s", "preference": "p", "query": "q", "steps": ["a"], "critique": "c", '
     '"score": NaN}', "invalid JSON"),
    ('{"id": "a", "id": "b"}', "invalid JSON"),
])
def test_a_malformed_record_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"id": "t/p0/s1", "scenario_id": "t", "preference": "p", "query": "q", "steps": ["a"],
                       "critique": "c", "score": 0.1})
    path = tmp_path / "d_rea.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(SFTDataError, match=rf"d_rea.jsonl:3: .*{message}"):
        load_records(path, "d_rea")


def test_cli_reports_a_bad_record_before_any_model_loads(tmp_path, capsys):
    from cdra_ray.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n')
    code = main(["sft", "--task", "prm", "--config", "sft_tiny_test", f"sft.data={path}",
                 f"run.output_dir={tmp_path}", "sft.model=/nonexistent/model"])
    assert code == 2
    assert f"{path}:1: field 'id' must be a string" in capsys.readouterr().err


def test_split_is_by_scenario_and_seeded():
    records = load_records(REA, "d_rea")
    train, heldout = split_by_scenario(records, 0.2, seed=0)
    train_s, held_s = {r.scenario_id for r in train}, {r.scenario_id for r in heldout}
    assert len(held_s) == 2 and not train_s & held_s and len(train) + len(heldout) == 60
    assert len(heldout) == 12  # whole scenarios: 2 paths x 3 steps each
    assert split_by_scenario(records, 0.2, seed=0)[1] == heldout
    assert {r.scenario_id for r in split_by_scenario(records, 0.2, seed=1)[1]} != held_s


def test_data_defaults_to_the_construct_output_then_the_sample(tmp_path):
    assert resolve_data_file(None, "prm", tmp_path) == REA
    assert resolve_data_file(None, "scalar_rm", tmp_path) == RFT
    (tmp_path / "d_rea.jsonl").write_text(REA.read_text())
    assert resolve_data_file(None, "prm_head", tmp_path) == tmp_path / "d_rea.jsonl"
    with pytest.raises(SFTDataError, match="sft.data='nope.jsonl': file not found"):
        resolve_data_file("nope.jsonl", "prm", tmp_path)


def test_config_checks_name_the_sft_key():
    assert load_config("sft_tiny_test").sft.max_steps == 4
    demo = load_config("sft_cpu_demo")
    assert (demo.sft.task, demo.reward.kind, demo.reward.model) == ("prm", "pers_genprm", "smollm2-135m-instruct")
    with pytest.raises(ConfigError, match=r"sft.task='dpo'"):
        load_config(None, ["sft.task=dpo"])
    with pytest.raises(ConfigError, match=r"sft.lora_r=8: LoRA is supported with zero_stage 0-2"):
        load_config(None, ["sft.lora_r=8", "sft.zero_stage=3"])


# ----------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("score, text", [(0.7, "0.70"), (-1.0, "-1.00"), (1, "1.00"), (-0.001, "0.00"),
                                         (0.345, "0.34"), (-0.35, "-0.35")])
def test_score_line_matches_the_reward_regex_and_parses_back(score, text):
    from cdra_ray.rewards.judge import SCORE_REGEX
    import re

    assert format_score(score) == text
    assert re.fullmatch(SCORE_REGEX, " " + text)
    assert parse_step_score(format_target("A critique.  ", score)) == float(text)
    assert format_target("A critique.  ", score) == f"A critique.\nSCORE: {text}"


def test_prm_example_masks_everything_but_critique_score_and_end_of_turn(tokenizer):
    record = load_records(REA, "d_rea")[4]
    ex = prm_example(tokenizer, record, 4096)
    target = ex.input_ids[len(ex.input_ids) - ex.count:]
    assert ex.loss_mask == [0] * (len(ex.input_ids) - ex.count) + [1] * ex.count
    assert tokenizer.decode(target) == format_target(record.critique, record.score) + "<|im_end|>"


def test_long_examples_lose_prompt_tokens_from_the_left_only(tokenizer):
    record = load_records(REA, "d_rea")[4]
    full = prm_example(tokenizer, record, 10_000)
    cut = prm_example(tokenizer, record, 300)
    assert len(cut.input_ids) == 300 and cut.truncated == len(full.input_ids) - 300
    assert cut.input_ids == full.input_ids[-300:] and cut.count == full.count
    assert fit_left([1, 2, 3, 4], 2, 4, "u") == ([3, 4], 2)
    with pytest.raises(SFTDataError, match="record 'u': its target alone has 4 tokens"):
        fit_left([1, 2], 4, 4, "u")


def test_sft_prompt_is_byte_identical_to_the_reward_service_prompt(tokenizer):
    """The reward service (PersGenPRM over an engine) sends, for step j of a path, exactly the SFT prompt."""
    from cdra_ray.engines.base import Completion
    from cdra_ray.rewards.pers_genprm import PersGenPRM
    from cdra_ray.sft.prm_eval import path_group

    tokenizers = [tokenizer]
    try:
        from transformers import AutoTokenizer

        from cdra_ray.models.embedded import smollm2_dir

        tokenizers.append(AutoTokenizer.from_pretrained(str(smollm2_dir())))
    except (FileNotFoundError, OSError):  # pragma: no cover - the demo model is part of the install
        pass

    class Recorder:
        def __init__(self, tok):
            self.tokenizer, self.prompts = tok, []

        def generate(self, prompts, settings):
            if settings.regex is None:
                self.prompts += [list(p) for p in prompts]
            return [[Completion(text=" 0.5" if settings.regex else "fine", token_ids=[1], logprobs=[0.0],
                                finish_reason="stop")] for _ in prompts]

    records = load_records(REA, "d_rea")
    last, scores = rea_paths(records)[3]
    path = {"path_id": last.path_id, "scenario_id": last.scenario_id, "preference": last.preference,
            "query": last.query, "steps": list(last.steps), "scores": scores}
    by_uid = {r.uid: r for r in records}
    for tok in tokenizers:
        engine = Recorder(tok)
        PersGenPRM(engine, min_requests_for_floor=1).score_groups([path_group(path)])
        assert len(engine.prompts) == 3
        for j, sent in enumerate(engine.prompts, start=1):
            ex = prm_example(tok, by_uid[f"{last.path_id}/s{j}"], 100_000)
            assert ex.input_ids[:len(ex.input_ids) - ex.count] == sent
            assert tok.decode(sent).encode() == tok.decode(ex.input_ids[:len(ex.input_ids) - ex.count]).encode()


# ----------------------------------------------------------------------------------------------- schedule, order
def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(k, total=10, warmup=2, schedule="cosine", min_ratio=0.1) for k in range(10)]
    assert f[:3] == [0.5, 1.0, 1.0] and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    lin = [lr_factor(k, total=6, warmup=0, schedule="linear", min_ratio=0.0) for k in range(6)]
    assert lin == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert lr_factor(5, total=6, warmup=1, schedule="constant", min_ratio=0.0) == 1.0


def test_example_order_covers_each_epoch_once_and_depends_only_on_the_step():
    per_step, n = 3, 7
    stream = [i for step in range(7) for i in step_indices(step, per_step, n, seed=4)]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    assert step_indices(5, per_step, n, seed=4) == stream[15:18]
    assert step_indices(0, per_step, n, seed=5) != step_indices(0, per_step, n, seed=4)


# ----------------------------------------------------------------------------------------------- critic metrics
def test_spearman_and_ranks_match_hand_computation():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x ranks [1,2,3,4], y = [1,3,2,4] -> rho = 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_pairwise_accuracy_counts_within_path_pairs_and_half_ties():
    # path A: teacher 0.1 < 0.5 < 0.9; predicted orders (1,2) right, (1,3) right, (2,3) tied -> 2.5/3
    # path B: teacher equal -> no pair
    acc, pairs = pairwise_accuracy([[(0.1, 0.0), (0.5, 0.4), (0.9, 0.4)], [(0.2, 1.0), (0.2, -1.0)]])
    assert pairs == 3 and acc == pytest.approx(2.5 / 3)


def test_critic_report_flags_a_flattering_critic():
    rows = [{"path_id": "p", "teacher": t, "predicted": 1.0, "parsed": True} for t in (-0.8, 0.1, 0.7)]
    rep = critic_report(rows)
    assert rep["share_at_top"] == 1.0 and rep["share_at_limits"] == 1.0 and math.isnan(rep["spearman"])
    assert rep["pairwise_accuracy"] == 0.5 and rep["mae"] == pytest.approx((1.8 + 0.9 + 0.3) / 3)
    assert "| flatterer | 100.0% | 1.000 | n/a | 50.0% |" in markdown_table({"flatterer": rep})
