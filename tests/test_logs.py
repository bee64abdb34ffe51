"""Quiet by default: an actor's own output goes to a file in the run directory; only cdra_ray's warnings (at
``run.log_level=warning``) still reach the terminal; ``debug`` leaves everything on the terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ACTOR = """
import logging, os, sys
from cdra_ray.logs import configure_actor_logs
path = configure_actor_logs("rollout")
print("plain print from the engine")
os.write(2, b"native write to fd 2\\n")
logging.getLogger("vllm.model_loader").warning("RotaryEmbedding: Failed to load weights")
logging.getLogger("cdra_ray.rewards.judge").info("an info line of cdra_ray")
logging.getLogger("cdra_ray.rewards.judge").warning("a warning that matters")
sys.stdout.flush(); sys.stderr.flush()
"""


def _actor(tmp_path: Path, level: str):
    env = {"CDRA_RAY_LOG_DIR": str(tmp_path / "logs"), "CDRA_RAY_LOG_LEVEL": level, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", ACTOR], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "logs").glob("rollout-*.log"))
    return proc, (files[0].read_text() if files else None)


def test_actor_output_goes_to_the_run_directory_and_only_warnings_reach_the_terminal(tmp_path):
    proc, log = _actor(tmp_path, "warning")
    terminal = proc.stdout + proc.stderr
    assert "Failed to load weights" not in terminal and "plain print" not in terminal and "native" not in terminal
    assert "an info line" not in terminal
    assert "WARNING cdra_ray.rewards.judge: a warning that matters" in terminal
    for line in ("plain print from the engine", "native write to fd 2", "RotaryEmbedding: Failed to load weights",
                 "an info line of cdra_ray", "a warning that matters"):
        assert line in log, line


def test_info_level_forwards_cdra_ray_info_lines_but_not_the_engine_logs(tmp_path):
    proc, log = _actor(tmp_path, "info")
    terminal = proc.stdout + proc.stderr
    assert "an info line of cdra_ray" in terminal and "Failed to load weights" not in terminal
    assert "Failed to load weights" in log


def test_debug_level_leaves_every_line_on_the_terminal(tmp_path):
    proc, log = _actor(tmp_path, "debug")
    assert log is None
    assert "plain print from the engine" in proc.stdout and "Failed to load weights" in proc.stderr


def test_driver_terminal_follows_run_log_level_and_driver_log_keeps_info(tmp_path, monkeypatch):
    from cdra_ray.config import ConfigError, load_config
    from cdra_ray.logs import LOG_DIR_VAR, LOG_LEVEL_VAR, configure_run_logs

    for var in (LOG_DIR_VAR, LOG_LEVEL_VAR):  # restored after the test: later actors must not inherit them
        monkeypatch.setenv(var, "")

    with pytest.raises(ConfigError, match="run.log_level"):
        load_config("tiny_test", ["run.log_level=loud"])
    config = load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.name=quiet"])
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.INFO)
    root.addHandler(terminal)
    added = []
    try:
        before = set(root.handlers)
        log_dir = configure_run_logs(config)
        added = [h for h in root.handlers if h not in before]
        assert terminal.level == logging.WARNING
        logging.getLogger("cdra_ray.driver").info("update 3 done")
        for h in added:
            h.flush()
        assert log_dir == tmp_path / "quiet" / "logs"
        assert "update 3 done" in (log_dir / "driver.log").read_text()
        assert os.environ[LOG_DIR_VAR] == str(log_dir) and os.environ[LOG_LEVEL_VAR] == "warning"  # for the actors
        # a second run in the same process writes to its own file only
        second = configure_run_logs(load_config("tiny_test", [f"run.output_dir={tmp_path}", "run.name=second"]))
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        logging.getLogger("cdra_ray.driver").info("second run")
        added[0].flush()
        assert "second run" in (second / "driver.log").read_text()
        assert "second run" not in (log_dir / "driver.log").read_text()
    finally:
        for h in [terminal, *added]:
            root.removeHandler(h)
            h.close()
