"""Submitting a verb to a Ray cluster as a job: upload an allow-list of the project, stream the logs,
return the job's end state. The job's driver runs ``jobs/<verb>.py CONFIG``; inside it
``RAY_ADDRESS`` is set, so the library joins the cluster instead of starting a local Ray.

Only the package, ``jobs/``, ``configs/``, ``pyproject.toml``, the config given and the data files it
names inside the project travel; anything that looks like a secret is refused even there, so a
``.env``, a key or a token file in the project folder never leaves the machine."""

from __future__ import annotations

import fnmatch
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasksim_ray.errors import TasksimError

JOB_VERBS = ("run_pipeline", "pretrain", "embed", "similarity", "transfer", "search")
ALLOWED = ("tasksim_ray", "jobs", "configs", "pyproject.toml")
SKIPPED = ("__pycache__", "*.egg-info", "*.pyc")
SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", "id_ecdsa*", "credentials*",
                "auth_token", ".netrc", "*.token", ".aws", ".ssh", ".ray", "secrets", ".git")
CONFIG_PATHS = (("data", "path"), ("probe", "path"), ("published", "path"))


@dataclass
class JobOutcome:
    job_id: str
    status: str
    logs: str

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def _secret(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_NAMES)


def _raw_config(config: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TasksimError(f"{config}: cannot read the config to submit ({type(exc).__name__})") from None
    return raw if isinstance(raw, dict) else {}


def _sets(args: list[str] | None) -> dict[str, str]:
    """The job's ``--set KEY=VALUE`` pairs (either spelling), as text."""
    out, items = {}, list(args or [])
    for i, item in enumerate(items):
        if item == "--set" and i + 1 < len(items):
            pair = items[i + 1]
        elif item.startswith("--set="):
            pair = item.removeprefix("--set=")
        else:
            continue
        key, _, value = pair.partition("=")
        out[key.strip()] = value.strip()
    return out


def check_results_kept(config: Path, args: list[str] | None) -> None:
    """A job runs in a temporary copy of the uploaded project on the head node, which Ray deletes: a
    relative workdir there takes the report and every cached artifact with it. Refused in one line
    unless results go to ``storage.uri`` or to an absolute workdir (storage the nodes share)."""
    raw, sets = _raw_config(config), _sets(args)
    storage = raw.get("storage") if isinstance(raw.get("storage"), dict) else {}
    workdir = str(sets.get("workdir", raw.get("workdir", "runs/tasksim")))
    if sets.get("storage.uri", storage.get("uri")) or Path(workdir).expanduser().is_absolute():
        return
    raise TasksimError(f"{config}: workdir '{workdir}' is relative, so a submitted job would write its report and "
                       "artifacts into its temporary working directory on the head node, which Ray deletes; set "
                       "storage.uri, or an absolute workdir on storage the cluster shares "
                       "(--arg=--set --arg=workdir=/shared/runs/NAME)")


def _config_files(project: Path, config: Path) -> list[Path]:
    """The config, and the data paths it names that lie inside the project (cluster nodes need them)."""
    raw = _raw_config(config)
    found = [config]
    for section, key in CONFIG_PATHS:
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            path = (project / value).resolve()
            if path.is_relative_to(project) and path.exists():
                found.append(path)
    return found


def upload_files(project: Path, config: str) -> list[str]:
    """Project-relative paths of every file a job of ``config`` uploads: the allow-list, no secrets."""
    project = project.resolve()
    cfg = (project / config).resolve()
    if not cfg.is_relative_to(project) or not cfg.is_file():
        raise TasksimError(f"{config}: the config must be a file inside the project folder {project}")
    roots = [project / a for a in ALLOWED if (project / a).exists()] + _config_files(project, cfg)
    files: set[str] = set()
    for root in roots:
        for path in ([root] if root.is_file() else sorted(root.rglob("*"))):
            rel = path.relative_to(project)
            if path.is_file() and not any(_secret(part) for part in rel.parts) \
                    and not any(fnmatch.fnmatch(part, s) for part in rel.parts for s in SKIPPED):
                files.add(rel.as_posix())
    return sorted(files)


def stage_upload(project: Path, files: list[str]) -> Path:
    """A temporary folder holding exactly ``files``: the job's working dir."""
    staging = Path(tempfile.mkdtemp(prefix="tasksim-job-"))
    for rel in files:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, staging / rel)
    return staging


def entrypoint(verb: str, config: str, args: list[str] | None) -> str:
    """The job's command line, every argument quoted: a config named ``a.yaml; rm x`` stays one argument."""
    return shlex.join(["python", f"jobs/{verb}.py", config, *(args or [])])


def runtime_env(working_dir: Path, pip: list[str] | None = None, image: str | None = None) -> dict[str, Any]:
    """The job's environment: the staged allow-list as working dir, plus pip packages or an image."""
    env: dict[str, Any] = {"working_dir": str(working_dir)}
    if pip:
        env["pip"] = pip
    if image:
        env["image_uri"] = image
    return env


def job_metadata(project: Path, verb: str, config: str) -> dict[str, str]:
    """What the Ray dashboard's job list shows beside the job: the config's name, the verb, the file."""
    name = _raw_config(project / config).get("name", Path(config).stem)
    return {"tasksim_name": str(name), "tasksim_verb": verb, "tasksim_config": config}


def _submit_when_ready(client: Any, entrypoint: str, env: dict[str, Any], metadata: dict[str, str],
                       wait_s: float = 120) -> str:
    """Submit, retrying while the head's job agent is still starting (a fresh cluster answers
    'No available agent to submit job' for its first seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env, metadata=metadata)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise TasksimError(f"job submission failed: {exc}") from None
            time.sleep(2)


def submit(address: str, verb: str, config: str, args: list[str] | None = None, project: Path | None = None,
           pip: list[str] | None = None, image: str | None = None, timeout_s: float = 3600,
           on_log: Callable[[str], None] | None = None,
           on_upload: Callable[[list[str]], None] | None = None) -> JobOutcome:
    """Submit ``jobs/<verb>.py CONFIG ARGS`` and wait for it, passing new log text to ``on_log`` and
    the uploaded files to ``on_upload`` first."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if verb not in JOB_VERBS:
        raise TasksimError(f"unknown job '{verb}'; jobs: {list(JOB_VERBS)}")
    project = (project or Path.cwd()).resolve()
    if not (project / "jobs" / f"{verb}.py").is_file():
        raise TasksimError(f"{project}/jobs/{verb}.py: no such job entry point")
    check_results_kept(project / config, args)  # before the cluster is asked anything
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TasksimError(f"cannot reach the Ray job server at {address}: {exc}") from None
    files = upload_files(project, config)
    if on_upload:
        on_upload(files)
    staging = stage_upload(project, files)
    try:
        job_id = _submit_when_ready(client, entrypoint(verb, config, args), runtime_env(staging, pip, image),
                                    job_metadata(project, verb, config))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
