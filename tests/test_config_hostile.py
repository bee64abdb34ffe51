"""Hostile configuration input: each is refused by ``cdra-ray config`` / ``train`` with exit code 2 and a message
naming the key (and the YAML file), before anything loads a model; never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdra_ray.cli import main

# (overrides, words the message must contain)
HOSTILE_OVERRIDES = [
    (["algorithm.advantage=cdpaa"], ["algorithm.advantage", "cdpaa", "cdpa", "grpo", "process_future"]),
    (["algorithm.clip_eps=1.5"], ["algorithm.clip_eps", "(0, 1)"]),
    (["algorithm.clip_eps=0"], ["algorithm.clip_eps", "(0, 1)"]),
    (["rollout.temperature=0"], ["rollout.temperature", "> 0"]),
    (["algorithm.eps=-1e-6"], ["algorithm.eps", ">= 0"]),
    (["algorithm.beta=nan"], ["algorithm.beta", "finite"]),
    (["learner.lr=inf"], ["learner.lr", "finite"]),
    (["reward.tts_temperature=-inf"], ["reward.tts_temperature", "finite"]),
    (["data.max_scenarios=-1"], ["data.max_scenarios", ">= 1"]),
    (["algorithm=5"], ["algorithm"]),
    (["run.name=${nope.missing}"], ["run.name", "nope.missing"]),
    (["algorithm.aggregation=token-sum"], ["algorithm.aggregation", "token-mean"]),
    (["algorithm.normalize=global"], ["algorithm.normalize", "position", "pooled"]),
    (["reward.kind=grm"], ["reward.kind", "genrm", "pers_genprm"]),
    (["reward.tts_samples=0"], ["reward.tts_samples"]),
    (["reward.options={bogus: 1}"], ["reward.options.bogus", "critique_max_tokens"]),
    (["rollout.engine=sglang"], ["rollout.engine", "vllm", "hf"]),
    (["run.max_actor_restarts=-1"], ["run.max_actor_restarts", ">= 0"]),
    (["train.save_every_minutes=-5"], ["train.save_every_minutes", ">= 0"]),
]


def _run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["config", "train"])
@pytest.mark.parametrize("overrides, words", HOSTILE_OVERRIDES, ids=[" ".join(o) for o, _ in HOSTILE_OVERRIDES])
def test_hostile_override_exits_2_naming_the_key(capsys, command, overrides, words):
    code, err = _run(capsys, [command, "--config", "tiny_test", *overrides])
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert "tiny_test.yaml" in err or overrides[0] in err  # the file, or the override that was read


def test_yaml_whose_top_level_is_a_list_names_the_file(capsys, tmp_path: Path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- rollout\n- reward\n")
    code, err = _run(capsys, ["config", "--config", str(bad)])
    assert code == 2 and str(bad) in err and "mapping" in err and "Traceback" not in err


def test_bad_interpolation_in_a_yaml_names_the_key_and_file(capsys, tmp_path: Path):
    bad = tmp_path / "interp.yaml"
    bad.write_text("run:\n  name: ${train.nothing_here}\n")
    code, err = _run(capsys, ["config", "--config", str(bad)])
    assert code == 2 and "run.name" in err and str(bad) in err and "Traceback" not in err


def test_bad_value_in_a_yaml_names_the_key_and_file(capsys, tmp_path: Path):
    bad = tmp_path / "nan.yaml"
    bad.write_text("algorithm:\n  beta: .nan\n")
    code, err = _run(capsys, ["train", "--config", str(bad)])
    assert code == 2 and "algorithm.beta" in err and str(bad) in err


def test_hostile_config_exits_2_from_the_real_command_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "cdra_ray.cli", "train", "--config", "tiny_test",
                           "algorithm.advantage=cdpaa"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "algorithm.advantage='cdpaa'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_registered_reward_kind_is_configured_through_reward_options():
    from dataclasses import dataclass

    from cdra_ray.config import ConfigError, load_config
    from cdra_ray.config.resolve import reward
    from cdra_ray.rewards.catalog import REWARDS, register_reward_model

    @dataclass(frozen=True)
    class EchoOptions:
        level: float = 0.5

        def __post_init__(self):
            if not 0 <= self.level <= 1:
                raise ValueError(f"level must be in [0, 1], got {self.level}")

    @register_reward_model("test_echo", EchoOptions, needs_engine=False)
    class Echo:
        def __init__(self, model_dir=None, *, level: float = 0.5):
            self.level = level

    try:
        config = load_config("tiny_test", ["reward.kind=test_echo", "reward.options={level: 0.25}"])
        entry, options = reward(config)
        assert entry.create(options, model_dir=None).level == 0.25
        with pytest.raises(ConfigError, match=r"reward.options.level: level must be in \[0, 1\]"):
            load_config("tiny_test", ["reward.kind=test_echo", "reward.options={level: 2}"])
    finally:
        REWARDS.pop("test_echo")


def test_a_section_given_as_a_number_in_a_yaml_names_the_section_and_file(capsys, tmp_path: Path):
    bad = tmp_path / "section.yaml"
    bad.write_text("algorithm: 5\n")
    code, err = _run(capsys, ["config", "--config", str(bad)])
    assert code == 2 and "'algorithm'" in err and str(bad) in err and "'?'" not in err
