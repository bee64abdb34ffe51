"""The `cdra-ray` command: help, and bad input failing fast with the key, file and line named."""

import subprocess
import sys
import time

import pytest

from cdra_ray.cli import main


def test_help_lists_subcommands_and_override_syntax(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for word in ("train", "config", "check-data", "prepare-model", "key=value"):
        assert word in out


def test_config_typo_is_an_error_naming_the_key(capsys):
    assert main(["config", "--config", "cpu_demo", "reward.knd=prm"]) == 2
    assert "reward.knd" in capsys.readouterr().err


def test_bad_dataset_fails_before_any_model_loads(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"preference": "p", "query": "q"}\n{"preference": "p"}\n')
    start = time.perf_counter()
    code = main(["train", "--config", "tiny_test", f"data.path={data}", f"run.output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and "missing field 'query'" in err
    assert time.perf_counter() - start < 10  # no model, engine or Ray start on the way to the error
    assert not (tmp_path / "tiny_test").exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    run_dir = tmp_path / "tiny_test"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"update": 1}\n')
    assert main(["train", "--config", "tiny_test", f"run.output_dir={tmp_path}"]) == 2
    assert "run.resume=true" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "cdra_ray.cli", "config", "--config", "tiny_test"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "group_size: 3" in out.stdout


def test_overrides_may_follow_options_and_a_stray_option_is_still_refused(capsys):
    from cdra_ray.cli import parse_command_line

    args = parse_command_line(["ablate", "grpo_grm", "--budget", "2", "a.b=1", "--evaluate", "c.d=2"])
    assert args.items == ["grpo_grm", "a.b=1", "c.d=2"] and args.budget == 2 and args.evaluate is True
    args = parse_command_line(["sft", "--task", "rft", "--config", "sft_tiny_test", "sft.max_steps=1"])
    assert args.overrides == ["sft.max_steps=1"] and args.task == "rft"
    for bad in (["train", "--config", "tiny_test", "--bogus"], ["prepare-model", "x", "a=1"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_command_line(bad)
        assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
