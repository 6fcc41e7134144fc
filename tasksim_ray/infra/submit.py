"""Submitting a verb to a Ray cluster as a job: upload the project, stream the logs, return the
job's end state. The job's driver runs ``jobs/<verb>.py CONFIG``; inside it ``RAY_ADDRESS`` is
set, so the library joins the cluster instead of starting a local Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasksim_ray.errors import TasksimError

JOB_VERBS = ("run_pipeline", "pretrain", "embed", "similarity", "transfer", "search")
# what never travels with the working dir: the virtual environment, results, caches, VCS
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]


@dataclass
class JobOutcome:
    job_id: str
    status: str
    logs: str

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def runtime_env(project: Path, pip: list[str] | None = None, image: str | None = None) -> dict[str, Any]:
    """The job's environment: the project folder as working dir, plus pip packages or an image."""
    env: dict[str, Any] = {"working_dir": str(project), "excludes": EXCLUDES}
    if pip:
        env["pip"] = pip
    if image:
        env["image_uri"] = image
    return env


def _submit_when_ready(client: Any, entrypoint: str, env: dict[str, Any], wait_s: float = 120) -> str:
    """Submit, retrying while the head's job agent is still starting (a fresh cluster answers
    'No available agent to submit job' for its first seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise TasksimError(f"job submission failed: {exc}") from None
            time.sleep(2)


def submit(address: str, verb: str, config: str, args: list[str] | None = None, project: Path | None = None,
           pip: list[str] | None = None, image: str | None = None, timeout_s: float = 3600,
           on_log: Callable[[str], None] | None = None) -> JobOutcome:
    """Submit ``jobs/<verb>.py CONFIG ARGS`` and wait for it, passing new log text to ``on_log``."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if verb not in JOB_VERBS:
        raise TasksimError(f"unknown job '{verb}'; jobs: {list(JOB_VERBS)}")
    project = (project or Path(__file__).resolve().parents[1]).resolve()
    if not (project / "jobs" / f"{verb}.py").is_file():
        raise TasksimError(f"{project}/jobs/{verb}.py: no such job entry point")
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TasksimError(f"cannot reach the Ray job server at {address}: {exc}") from None
    entrypoint = " ".join(["python", f"jobs/{verb}.py", config, *(args or [])])
    job_id = _submit_when_ready(client, entrypoint, runtime_env(project, pip, image))
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    seen, deadline = 0, time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if on_log and len(logs) > seen:
            on_log(logs[seen:])
            seen = len(logs)
        if status in done:
            return JobOutcome(job_id, str(status.value), logs)
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TasksimError(f"job {job_id} ({verb}) did not finish within {timeout_s:.0f} s; stopped it")
        time.sleep(1.0)
