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


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An absolute workdir (a job's relative one would land in Ray's temporary copy of the project),
    shared by the pipeline job and the transfer job after it, which reuses its models."""
    return tmp_path_factory.mktemp("jobs")


def _names(head: str, kind: str) -> list[str]:
    """The names of every task or actor the cluster has seen, through Ray's state API."""
    from ray.util.state import list_actors, list_tasks

    listing = list_tasks if kind == "tasks" else list_actors
    return [r.name for r in listing(address=head, limit=10_000, raise_on_missing_output=False, timeout=60)]


def test_pipeline_job_succeeds_and_writes_artifacts(head: str, shared_workdir: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    start, tmp_path = time.monotonic(), shared_workdir
    outcome = submit(head, "run_pipeline", str(TINY_CONFIG.relative_to(REPO)), ["--set", f"workdir={tmp_path}"],
                     project=REPO, timeout_s=600)
    assert outcome.succeeded, outcome.logs[-3000:]
    # the job's output names its interpreter first (after Ray's own notices, up to "Running entrypoint");
    # the job list names the config and the verb
    lines = outcome.logs.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Running entrypoint for job")) + 1
    assert lines[first] == f"tasksim job: {sys.executable} (Python {sys.version.split()[0]})", outcome.logs[:2000]
    metadata = JobSubmissionClient(head).get_job_info(outcome.job_id).metadata
    assert metadata == {"tasksim_name": "tiny", "tasksim_verb": "run_pipeline", "tasksim_config": "configs/tiny.yaml"}
    # the dashboard tells the work apart: what each task or actor does, for which task
    tasks = set(_names(head, "tasks"))
    assert {"pretrain:mu", "pretrain:alpha", "pretrain:homo", "pretrain:lumo"} <= tasks, sorted(tasks)
    assert {"rsa-vector:mu", "rsa-vector:alpha"} <= tasks and any(t.startswith("embed:") for t in tasks)
    assert "model-host-0" in _names(head, "actors")
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


def test_transfer_cells_carry_their_target_source_size_and_fold(head: str, shared_workdir: Path) -> None:
    sets = {"workdir": shared_workdir, "transfer.studies": "[matrix]", "transfer.tasks": "[mu, alpha]",
            "transfer.folds": 1, "transfer.sizes": "[30, 60]"}
    outcome = submit(head, "transfer", str(TINY_CONFIG.relative_to(REPO)),
                     [a for k, v in sets.items() for a in ("--set", f"{k}={v}")], project=REPO, timeout_s=600)
    assert outcome.succeeded, outcome.logs[-3000:]
    cells = {t for t in _names(head, "tasks") if t.startswith("cell:")}
    assert {"cell:mu<-scratch n=30 fold 0", "cell:mu<-alpha n=60 fold 0", "cell:alpha<-mu n=30 fold 0"} <= cells, \
        sorted(cells)


def test_a_relative_workdir_is_refused_before_anything_is_submitted(head: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.job_submission import JobSubmissionClient
    from typer.testing import CliRunner

    from tasksim_ray.cli import app

    monkeypatch.chdir(REPO)
    before = len(JobSubmissionClient(head).list_jobs())
    result = CliRunner().invoke(app, ["submit", "configs/tiny.yaml", "--address", head])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "workdir 'runs/tiny' is relative" in lines[0]
    assert "set storage.uri, or an absolute workdir" in lines[0]
    assert len(JobSubmissionClient(head).list_jobs()) == before
