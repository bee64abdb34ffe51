"""The GPU check's pure parts on CPU: plan per GPU count, the timeout runner, the table, exit codes, no-CUDA exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdra_ray.gpu_check.plan import (
    EXIT_FAILED,
    EXIT_NO_GPU,
    EXIT_OK,
    FAIL,
    PASS,
    SKIP,
    TIMEOUT,
    Check,
    Row,
    check_plan,
    exit_code,
    format_table,
    run_bounded,
    skipped_rows,
)

TESTS = Path(__file__).resolve().parent


def runs(plan):
    return [check.name for check, reason in plan if reason is None]


def test_plan_follows_the_number_of_gpus():
    assert runs(check_plan(0)) == []
    assert {reason for _, reason in check_plan(0)} == {"no CUDA device"}
    one = check_plan(1)
    assert runs(one) == ["vllm_engine", "learner_zero3", "learner_offload", "tiny_preset"]
    assert dict((c.name, r) for c, r in one)["nccl_sync"] == "needs 2 GPUs, found 1"
    assert runs(check_plan(2)) == runs(one) + ["nccl_sync"]
    assert runs(check_plan(4)) == runs(one) + ["nccl_sync", "tiny_preset_nccl"]
    assert runs(check_plan(8, only=["nccl_sync"])) == ["nccl_sync"]
    with pytest.raises(ValueError, match="unknown check"):
        check_plan(1, only=["warp_drive"])


def check(target: str, rows=("first", "second"), timeout_s: float = 60) -> Check:
    return Check("t", f"gpu_check_targets:{target}", tuple(rows), 1, timeout_s)


@pytest.fixture(autouse=True)
def importable_targets(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # the spawned child inherits sys.path


def test_runner_maps_reported_rows_and_flags_missing_ones(tmp_path):
    rows = run_bounded(check("reports", rows=("first", "second", "third")), str(tmp_path))
    assert [(r.name, r.status, r.detail) for r in rows] == [
        ("first", PASS, "fine"), ("second", FAIL, "wrong number"), ("third", FAIL, "not reported by the check")]


def test_runner_turns_an_exception_into_failed_rows_naming_it(tmp_path):
    rows = run_bounded(check("raises"), str(tmp_path))
    assert {r.status for r in rows} == {FAIL}
    assert rows[0].detail.startswith("ValueError: engine refused the config")


def test_runner_reports_a_dead_check_process(tmp_path):
    rows = run_bounded(check("dies"), str(tmp_path))
    assert {r.status for r in rows} == {FAIL} and "exit code 7" in rows[0].detail


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return True
    return "\nState:\tZ" in status.read_text()  # killed, waiting to be reaped


def test_a_hanging_check_is_killed_with_its_children_and_reported_as_timeout(tmp_path):
    rows = run_bounded(check("hangs_with_a_child", rows=("first",), timeout_s=8), str(tmp_path))
    assert [(r.status, r.name) for r in rows] == [(TIMEOUT, "first")] and "killed" in rows[0].detail
    pid = int((tmp_path / "child.pid").read_text())
    for _ in range(100):  # bounded wait for the kernel to deliver SIGKILL
        if _gone(pid):
            break
        time.sleep(0.1)
    assert _gone(pid), "the check's child process survived"


def test_table_and_exit_codes():
    rows = [Row("a", PASS, 1.5, "ok"), Row("b", SKIP, 0.0, "needs 2 GPUs, found 1")]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[2].split() == ["a", "pass", "1.5", "ok"]
    assert lines[3].split()[:3] == ["b", "skip", "-"] and lines[3].endswith("needs 2 GPUs, found 1")
    assert exit_code(rows) == EXIT_OK
    assert exit_code(rows + [Row("c", TIMEOUT, 9.0, "hang")]) == EXIT_FAILED
    assert exit_code(rows + [Row("c", FAIL, 9.0, "x")]) == EXIT_FAILED
    assert exit_code([Row("b", SKIP, 0.0, "no CUDA device")]) == EXIT_NO_GPU
    skipped = skipped_rows(check_plan(1))
    assert {r.status for r in skipped} == {SKIP}
    assert [r.name for r in skipped][:3] == ["nccl: sync 1", "nccl: sync 2", "nccl: failure mid-broadcast -> error"]


def test_without_cuda_the_check_exits_3_and_says_what_was_skipped(repo_root):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo_root)}
    done = subprocess.run([sys.executable, "-m", "cdra_ray.gpu_check"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=repo_root)
    assert done.returncode == EXIT_NO_GPU
    assert "No CUDA device is visible" in done.stderr and "skipped all 12 checks" in done.stderr
    assert "nccl: failure mid-broadcast -> error" in done.stdout and "no CUDA device" in done.stdout


def test_launch_script_without_cuda_exits_3(repo_root):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CDRA_SKIP_INSTALL": "1", "CDRA_VENV": sys.prefix}
    done = subprocess.run(["bash", str(repo_root / "launch" / "gpu_check.sh"), "--only", "nccl_sync"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == EXIT_NO_GPU, done.stderr
    assert "nccl: sync 1" in done.stdout and "not selected" in done.stdout


def test_check_bodies_inject_failures_after_n_tensors_and_build_valid_batches():
    from cdra_ray.gpu_check.checks import ArmableSource, make_groups
    from cdra_ray.learner.batch import build_batch

    class Source:
        def metadata(self):
            return ["m"]

        def held_names(self):
            return None

        def __iter__(self):
            return iter([("a", 1), ("b", 2), ("c", 3)])

    source = ArmableSource(Source())
    assert list(source) == [("a", 1), ("b", 2), ("c", 3)] and source.metadata() == ["m"]
    source.fail_after = 2
    seen = []
    with pytest.raises(RuntimeError, match="injected failure after 2 tensors"):
        for name, _ in source:
            seen.append(name)
    assert seen == ["a", "b"]
    batch = build_batch(make_groups(2, vocab=512))  # the learner checks train on these
    assert batch.input_ids.shape[0] == 8 and int(batch.input_ids.max()) < 512
