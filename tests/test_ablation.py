"""The Table 3 ablation: presets that differ only in the reward paradigm, equal budgets enforced, and the
comparison table built (a pure function) from hand-made metrics. Runs are faked: no Ray, no models."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from cdra_ray.ablation import (
    TABLE3_PRESETS,
    RunMetrics,
    ablation_configs,
    check_equal_budgets,
    comparison_rows,
    run_ablation,
    split_presets_and_overrides,
    to_csv,
    to_markdown,
)
from cdra_ray.config import ConfigError, load_config

ABLATIONS = Path(__file__).resolve().parents[1] / "configs" / "ablations"
EXPECTED = {  # preset -> (reward.kind, algorithm.advantage)
    "grpo_rm": ("scalar_rm", "grpo"),
    "grpo_grm": ("genrm", "grpo"),
    "grpo_prm": ("prm", "process_future"),
    "grpo_rubric": ("rubric_rm", "grpo"),
    "grpo_tts": ("tts", "grpo"),
    "cdra_pers_genprm": ("pers_genprm", "cdpa"),
}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_one_preset_per_table3_row_differing_only_in_the_reward_paradigm():
    assert sorted(p.stem for p in ABLATIONS.glob("*.yaml")) == sorted(TABLE3_PRESETS) == sorted(EXPECTED)
    flat = {}
    for name, (kind, advantage) in EXPECTED.items():
        config = load_config(str(ABLATIONS / f"{name}.yaml"))
        assert (config.reward.kind, config.algorithm.advantage, config.run.name) == (kind, advantage, name)
        flat[name] = _flatten(dataclasses.asdict(config))
    base = flat["cdra_pers_genprm"]
    for name, values in flat.items():
        differs = {k for k in base if base[k] != values[k]}
        assert differs <= {"reward.kind", "algorithm.advantage", "run.name"}, name


def test_ablation_configs_apply_budget_overrides_and_one_run_dir_each(tmp_path):
    named = ablation_configs(["grpo_grm", "cdra_pers_genprm"], ["data.max_scenarios=3"], budget=7,
                             output_dir=tmp_path)
    assert [label for label, _ in named] == ["grpo_grm", "cdra_pers_genprm"]
    for label, config in named:
        assert (config.train.total_updates, config.data.max_scenarios) == (7, 3)
        assert Path(config.run.output_dir) / config.run.name == tmp_path / "runs" / label
    with pytest.raises(ConfigError, match="budget"):
        ablation_configs(["grpo_grm"], budget=0, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="appear twice"):
        ablation_configs(["grpo_grm", "grpo_grm"], output_dir=tmp_path)


def test_unequal_budgets_are_refused_naming_the_key_and_each_value(tmp_path):
    other = tmp_path / "other_seed.yaml"
    other.write_text((ABLATIONS / "grpo_grm.yaml").read_text().replace("  seed: 0\nrollout", "  seed: 5\nrollout"))
    with pytest.raises(ConfigError, match=r"data\.seed: grpo_grm=0, other_seed=5"):
        ablation_configs(["grpo_grm", str(other)], output_dir=tmp_path)
    # the same overrides for every preset make them equal again
    named = ablation_configs(["grpo_grm", str(other)], ["data.seed=1"], output_dir=tmp_path)
    check_equal_budgets(named)
    assert {c.data.seed for _, c in named} == {1}


def test_split_presets_and_overrides():
    assert split_presets_and_overrides(["grpo_rm", "train.seed=3", "grpo_tts"]) == (["grpo_rm", "grpo_tts"],
                                                                                  ["train.seed=3"])
    assert split_presets_and_overrides(["train.seed=3"]) == (list(TABLE3_PRESETS), ["train.seed=3"])


# ----------------------------------------------------------------------------------------------- the table
GENRM_RECORDS = [
    {"update": 1, "reward/step_mean": 0.5, "reward/step_std": 0.1, "reward/response_sum_mean": 0.5,
     "advantage/zero_rate": 1.0, "timing/wait": 2.0, "timing/learn": 1.0, "timing/weight_sync": 0.5,
     "timing/reward": 1.5, "timing/generate": 9.0, "reward/parse_rate": 1.0, "reward/defaulted_steps": 0},
    {"update": 2, "reward/step_mean": 0.7, "reward/step_std": 0.3, "reward/response_sum_mean": 0.7,
     "advantage/zero_rate": 0.0, "timing/wait": 1.0, "timing/learn": 1.0, "timing/weight_sync": 0.5,
     "timing/checkpoint": 0.5, "timing/reward": 0.5, "reward/parse_rate": 0.9, "reward/defaulted_steps": 2},
]
RM_RECORDS = [  # a score-head model: no parse rate; its learner logged no zero rate
    {"update": k, "reward/step_mean": v, "reward/step_std": 0.0, "reward/response_sum_mean": v,
     "timing/wait": 1.0, "timing/learn": 1.0, "timing/weight_sync": 1.0, "reward/defaulted_steps": 0}
    for k, v in ((1, 0.0), (2, 0.3), (3, 0.6))
]


def test_comparison_rows_from_hand_made_metrics():
    rows = comparison_rows([RunMetrics("grpo_grm", "genrm", "grpo", GENRM_RECORDS),
                            RunMetrics("grpo_rm", "scalar_rm", "grpo", RM_RECORDS)],
                           extra={"grpo_rm": {"acc_da": 0.7}})
    grm, rm = rows
    assert (grm["preset"], grm["reward_kind"], grm["advantage"], grm["updates"]) == ("grpo_grm", "genrm", "grpo", 2)
    assert grm["reward_step_mean"] == pytest.approx(0.6)  # (0.5 + 0.7) / 2
    assert grm["reward_step_std"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert (grm["reward_first_half"], grm["reward_second_half"]) == (0.5, 0.7)
    assert grm["zero_adv_rate"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    # driver phases only (generate/reward overlap with wait): (2 + 1 + 0.5) and (1 + 1 + 0.5 + 0.5) -> 3.25
    assert grm["sec_per_update"] == pytest.approx(3.25)
    assert grm["reward_sec_per_update"] == pytest.approx(1.0)  # (1.5 + 0.5) / 2
    assert grm["parse_rate"] == 0.9  # cumulative: the last record's
    assert grm["defaulted_scores"] == 2.0
    assert rm["reward_step_mean"] == pytest.approx(0.3)  # (0 + 0.3 + 0.6) / 3
    # 3 updates: first half = update 1 (0.0), second = updates 2-3 ((0.3 + 0.6) / 2)
    assert (rm["reward_first_half"], rm["reward_second_half"]) == (0.0, pytest.approx(0.45))
    assert (rm["zero_adv_rate"], rm["parse_rate"], rm["reward_sec_per_update"]) == (None, None, None)
    assert rm["sec_per_update"] == pytest.approx(3.0) and rm["acc_da"] == 0.7

    markdown = to_markdown(rows).splitlines()
    assert markdown[0].startswith("| preset | reward_kind | advantage | updates | reward_step_mean")
    assert markdown[0].endswith("| defaulted_scores | acc_da |")
    assert "| grpo_grm | genrm | grpo | 2 | 0.6000 |" in markdown[2]
    assert markdown[2].count("n/a") == 1  # grm: no acc_da
    assert markdown[3].count("n/a") == 3  # rm: zero rate, reward seconds, parse rate
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed[1]["parse_rate"] == "" and float(parsed[0]["sec_per_update"]) == 3.25


def test_run_ablation_runs_each_preset_once_with_equal_budgets_and_writes_the_table(tmp_path):
    seen = []

    def fake_train(config):
        seen.append(config)
        run_dir = Path(config.run.output_dir) / config.run.name
        run_dir.mkdir(parents=True)
        records = GENRM_RECORDS if config.reward.kind == "genrm" else RM_RECORDS
        lines = [json.dumps(r) + "\n" for r in records[: config.train.total_updates]]
        (run_dir / "metrics.jsonl").write_text("".join(lines))
        (run_dir / "summary.json").write_text("{}")
        return {}

    rows = run_ablation(["grpo_grm", "grpo_rm"], ["data.max_scenarios=4"], budget=2, output_dir=tmp_path,
                        train_fn=fake_train)
    assert [c.run.name for c in seen] == ["grpo_grm", "grpo_rm"]
    assert {(c.train.total_updates, c.train.seed, c.data.seed, c.data.max_scenarios) for c in seen} == {(2, 0, 0, 4)}
    assert [r["updates"] for r in rows] == [2, 2] and rows[1]["reward_step_mean"] == pytest.approx(0.15)
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["presets"] == ["grpo_grm", "grpo_rm"] and saved["budget"] == 2 and saved["rows"] == rows
    assert "| grpo_rm | scalar_rm | grpo | 2 |" in (tmp_path / "ablation.md").read_text()
    assert (tmp_path / "ablation.csv").read_text().splitlines()[0].startswith("preset,reward_kind,advantage")

    # finished runs are read, not re-run
    seen.clear()
    again = run_ablation(["grpo_grm", "grpo_rm"], ["data.max_scenarios=4"], budget=2, output_dir=tmp_path,
                         skip_existing=True, train_fn=fake_train)
    assert seen == [] and again == rows


def _fake_train(config):
    run_dir = Path(config.run.output_dir) / config.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RM_RECORDS[:2]))
    (run_dir / "summary.json").write_text("{}")
    return {}


def _metric(mean):
    return {"mean": mean, "low": mean, "high": mean, "n": 4, "n_unparsed": 0}


def test_evaluate_adds_table1_columns_from_one_judge_for_every_row(tmp_path):
    calls = []

    def fake_evaluate(config):
        calls.append(config)
        rows = [{"method": m.name, "step_format": 50.0 + k,
                 "metrics": {name: _metric(10.0 * k + i) for i, name in enumerate(
                     ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie"))}}
                for k, m in enumerate(config.evaluate.methods)]
        return {"rows": rows, "dir": tmp_path / "evaluation"}

    # no judge configured: no evaluation unless asked for
    run_ablation(["grpo_grm", "grpo_rm"], budget=2, output_dir=tmp_path / "a", train_fn=_fake_train,
                 evaluate_fn=fake_evaluate)
    assert calls == []
    rows = run_ablation(["grpo_grm", "grpo_rm"], ["evaluate.judge.model=tiny-llama", "evaluate.data=builtin:x"],
                        budget=2, output_dir=tmp_path / "b", train_fn=_fake_train, evaluate_fn=fake_evaluate)
    [config] = calls  # one evaluation, one judge, every trained policy a method
    assert [(m.name, m.kind, m.model) for m in config.evaluate.methods] == [
        ("grpo_grm", "policy", str(tmp_path / "b" / "runs" / "grpo_grm")),
        ("grpo_rm", "policy", str(tmp_path / "b" / "runs" / "grpo_rm"))]
    assert config.evaluate.output_dir == str(tmp_path / "b" / "evaluation")
    assert rows[1]["eval_acc_pf"] == 10.0 and rows[1]["eval_m_ie"] == 15.0 and rows[0]["eval_step_format"] == 50.0
    assert "eval_acc_da" in (tmp_path / "b" / "ablation.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="evaluate.judge.model"):
        run_ablation(["grpo_grm"], budget=2, output_dir=tmp_path / "c", train_fn=_fake_train, evaluate=True,
                     evaluate_fn=fake_evaluate)
    assert not (tmp_path / "c" / "runs").exists()  # refused before any training
