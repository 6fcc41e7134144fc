"""Jobs on a real Ray cluster started with `ray start --head` on 127.0.0.1 (token auth on)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasksim_ray.infra.submit import submit

from .conftest import REPO, TINY_CONFIG, free_port, stop_ray_processes

RAY = str(Path(sys.executable).parent / "ray")


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")  # short: Ray's socket paths live under it
    dashboard = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
           # the agent's default ports are fixed: another Ray on this machine (the test session's) may hold them
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--ray-client-server-port={free_port()}",
           f"--metrics-export-port={METRICS_PORT}", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    try:
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
        os.environ["RAY_AUTH_MODE"] = "token"  # the job client authenticates with the cluster's token
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        stop_ray_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_pipeline_job_succeeds_and_writes_artifacts(head: str, tmp_path: Path) -> None:
    start = time.monotonic()
    outcome = submit(head, "run_pipeline", str(TINY_CONFIG.relative_to(REPO)), ["--set", f"workdir={tmp_path}"],
                     project=REPO, timeout_s=600)
    assert outcome.succeeded, outcome.logs[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["selection"]["subset"] and len(report["tasks"]) >= 3
    assert "Selected pretraining subset" in outcome.logs
    assert time.monotonic() - start < 600
    # the job's workers recorded tasksim metrics; the node exports them for Prometheus
    deadline, text = time.monotonic() + 60, ""
    while "ray_tasksim_epochs" not in text and time.monotonic() < deadline:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    epochs = [ln for ln in text.splitlines() if ln.startswith("ray_tasksim_epochs") and 'stage="pretrain"' in ln]
    assert epochs and float(epochs[0].rsplit(" ", 1)[1]) >= 1


def test_bad_config_job_fails_with_the_error_in_its_logs(head: str, tmp_path: Path) -> None:
    outcome = submit(head, "pretrain", str(TINY_CONFIG.relative_to(REPO)),
                     ["--set", f"workdir={tmp_path}", "--set", "train.max_epoch=3"], project=REPO, timeout_s=300)
    assert outcome.status == "FAILED"
    assert "unknown key 'train.max_epoch'" in outcome.logs
