"""`ray job submit` of the tiny preset against a loopback Ray head that this test starts and stops."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else shutil.which("ray")


def _wait_for_job_server(address: str, timeout_s: float = 180.0) -> None:
    """The dashboard's job server comes up a little after `ray start` returns (later on a loaded machine)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout_s
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)


@pytest.fixture()
def loopback_head(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # head and client must agree (Ray 2.60 token auth)
    gcs_port, dashboard_port = _free_port(), _free_port()
    start = subprocess.run(
        [_ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--num-cpus", "8",
         "--disable-usage-stats", "--include-dashboard", "true"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_job_server(address)
        yield address, env
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_the_tiny_preset_to_success(loopback_head, tmp_path):
    address, env = loopback_head
    submission_id = f"cdra-test-{uuid.uuid4().hex[:8]}"
    run_root = tmp_path / "runs"
    submit = subprocess.run(
        [_ray_cli(), "job", "submit", "--address", address, "--submission-id", submission_id,
         "--working-dir", str(REPO), "--runtime-env", str(REPO / "launch" / "runtime_env.yaml"), "--",
         sys.executable, "launch/ray_job.py", "--config", "tiny_test", f"run.output_dir={run_root}",
         "rollout.engine=hf", "reward.engine=hf", "train.total_updates=1", "run.progress_bar=false"],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    assert submission_id in {job.submission_id for job in client.list_jobs()}, (
        f"the job was not submitted:\n{submit.stdout[-4000:]}\n{submit.stderr[-4000:]}")
    deadline = time.time() + 120
    status = client.get_job_status(submission_id)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(1)
        status = client.get_job_status(submission_id)
    assert status == JobStatus.SUCCEEDED, (
        f"{status}\n--- submit output ---\n{submit.stdout[-4000:]}\n{submit.stderr[-4000:]}")
    run_dir = run_root / "tiny_test"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1]
    assert (run_dir / "checkpoints" / "update_000001" / "policy" / "config.json").is_file()
    assert "CDPA run finished" in submit.stdout
