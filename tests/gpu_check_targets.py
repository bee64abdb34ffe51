"""Stand-ins for GPU checks, run by tests/test_gpu_check.py through the real timeout runner (spawned processes)."""

import os
import subprocess
import time
from pathlib import Path


def reports(workdir):
    return {"first": (True, "fine"), "second": (False, "wrong number")}


def reports_one(workdir):
    return {"first": (True, "fine")}


def raises(workdir):
    raise ValueError("engine refused the config")


def dies(workdir):
    os._exit(7)


def hangs_with_a_child(workdir):
    """Like a check stuck in NCCL that started vLLM's engine core: the child must be killed too."""
    child = subprocess.Popen(["sleep", "600"])
    Path(workdir, "child.pid").write_text(str(child.pid))
    time.sleep(600)
