"""Ctrl-C, SIGTERM and full disks through the CLI, in real subprocesses.

A signal at any stage (pretraining, embedding, similarity) stops ``tasksim run`` within seconds with
one line and exit 128 + the signal's number, never 0, no traceback, no scratch folder left and every
finished artifact intact. A disk that fills while a writer writes (a kernel file-size limit, which
gives EFBIG at the OS boundary, or ENOSPC from /dev/full) is one line naming the file, exit 2, and
the cache stays intact and resumable.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasksim_ray.infra.cache import MANIFEST, verify

from .conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.ray
CLI = [sys.executable, "-c", "from tasksim_ray.cli import main; main()"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _interrupt(args: list[str], ready: Callable[[list[str]], bool], sig: signal.Signals,
               timeout: float = 240) -> tuple[int, float, list[str]]:
    """Run ``tasksim ARGS`` in its own process group, send ``sig`` to the group (as a terminal's
    Ctrl-C does) once ``ready(stdout lines)``; (exit code, seconds from the signal to the exit,
    stderr's non-empty lines)."""
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready(lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"ended before the signal: {''.join(err)[-2000:]}"
    os.killpg(proc.pid, sig)
    sent = time.monotonic()
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    took = time.monotonic() - sent
    time.sleep(0.2)  # the reader threads drain the pipes
    return code, took, [line.rstrip() for line in err if line.strip()]


def _check_cache(artifacts: Path) -> int:
    """No scratch or set-aside folder anywhere; every finished artifact matches its manifest."""
    assert not [p for p in artifacts.rglob(".tmp-*")] and not [p for p in artifacts.rglob(".old-*")]
    finished = [p.parent for p in artifacts.rglob(MANIFEST) if not p.parent.name.startswith(".")]
    for folder in finished:
        verify(folder)
    return len(finished)


def _stopped_cleanly(code: int, took: float, err: list[str], sig: signal.Signals) -> None:
    assert code == 128 + sig, (code, err[-5:])
    assert took < 30, f"{took:.0f} s from {sig.name} to the exit"
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [f"error: interrupted by {sig.name}: stopped; finished artifacts are kept (half-written ones "
                      "removed) and a rerun resumes from them"], err[-5:]
    assert not any("Traceback" in line for line in err), err


def test_signals_stop_every_stage_within_seconds(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    artifacts = workdir / "artifacts"
    args = ["run", str(TINY_CONFIG), "--set", f"workdir={workdir}", "--set", "similarity.bootstrap.n_boot=20000",
            "--set", "train.max_epochs=6", "--set", "train.patience=6"]

    # SIGTERM (a job manager's stop) while the task models train: one has finished, others run
    def one_model(_: list[str]) -> bool:
        return any((artifacts / "models").glob(f"*/{MANIFEST}"))

    code, took, err = _interrupt(args, one_model, signal.SIGTERM)
    _stopped_cleanly(code, took, err, signal.SIGTERM)
    models = len(list((artifacts / "models").glob(f"*/{MANIFEST}")))
    assert 1 <= models < 4 and _check_cache(artifacts) >= 4 + models  # tasks, preprocess, featurize, probe

    # Ctrl-C while the probe set streams through the model hosts
    code, took, err = _interrupt(args, lambda out: any("[embed] embedding" in line for line in out), signal.SIGINT)
    _stopped_cleanly(code, took, err, signal.SIGINT)
    _check_cache(artifacts)
    assert len(list((artifacts / "models").glob(f"*/{MANIFEST}"))) == 4  # the rerun kept and finished the models

    # Ctrl-C during the similarity stage (it used to carry on and exit 0)
    def similarity_running(out: list[str]) -> bool:
        started = [i for i, line in enumerate(out) if "[similarity] running" in line]
        return bool(started) and (time.sleep(1.0) is None)

    code, took, err = _interrupt(args, similarity_running, signal.SIGINT)
    _stopped_cleanly(code, took, err, signal.SIGINT)
    _check_cache(artifacts)
    assert not (artifacts / "similarity").exists() or not list((artifacts / "similarity").glob(f"*/{MANIFEST}"))
    assert not (workdir / "report").exists()


def _limit_file_size(limit: int) -> Callable[[], None]:
    def child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return child


def test_a_full_disk_is_one_line_naming_the_file_and_the_cache_stays_intact(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    args = [*CLI, "featurize", str(TINY_CONFIG), "--set", f"workdir={workdir}"]
    # 400 kB: the task table and the split fit, the graph store (1.3 MB, torch.save) does not
    full = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(400_000))
    errors = [line for line in full.stderr.splitlines() if line.strip()]
    assert full.returncode == 2 and len(errors) == 1, full.stderr[-2000:]
    assert errors[0].startswith("error: ") and "/artifacts/featurize/" in errors[0]
    assert errors[0].endswith("/graphs.pt: cannot write: File too large"), errors[0]
    assert _check_cache(workdir / "artifacts") == 2  # tasks and preprocess, intact
    again = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing cached artifact") == 2, again.stderr[-2000:]
    assert _check_cache(workdir / "artifacts") == 3


MODEL_WRITER = """
import sys, torch
from pathlib import Path
from tasksim_ray.errors import TasksimError
from tasksim_ray.models import TaskModelInfo
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.training.checkpoint import write_model_dir
root = Path(sys.argv[1])
hp = {"hidden_dim": int(sys.argv[2]), "ffn_hidden_dim": 8, "depth": 2}
try:
    write_model_dir(root / sys.argv[3], DMPNN(**hp), TaskModelInfo("dmpnn", hp, "mu", "D", 0.0, 1.0), "model", [])
except TasksimError as exc:
    print(exc)
"""

ENOSPC_CLI = """
import os, sys
real = os.fdopen
def full(fd, *args, **kwargs):  # every text file written through a descriptor lands on /dev/full
    os.close(fd)
    return real(os.open("/dev/full", os.O_WRONLY), *args, **kwargs)
os.fdopen = full
from tasksim_ray.cli import main
sys.argv = ["tasksim", *sys.argv[1:]]
main()
"""


def test_a_model_file_on_a_full_disk_is_one_line_naming_it(tmp_path: Path) -> None:
    kept = subprocess.run([sys.executable, "-c", MODEL_WRITER, str(tmp_path), "8", "small"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0 and kept.stdout == "", kept.stderr[-2000:]
    # a 300-wide D-MPNN's state dict (1.5 MB) past a 200 kB limit: torch's own writer fails mid-file
    full = subprocess.run([sys.executable, "-c", MODEL_WRITER, str(tmp_path), "300", "big"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(200_000))
    assert full.returncode == 0, full.stderr[-2000:]
    assert full.stdout.strip() == f"{tmp_path}/big/state_dict.pt: cannot write: File too large", full.stdout
    assert not (tmp_path / "big").exists() and _check_cache(tmp_path) == 1  # the earlier model, intact


def test_enospc_through_the_cli_is_one_line_naming_the_file(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    done = subprocess.run([sys.executable, "-c", ENOSPC_CLI, "tasks", str(TINY_CONFIG), "--set", f"workdir={workdir}"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert errors[0].endswith("/manifest.json: cannot write: No space left on device"), errors[0]
    assert _check_cache(workdir / "artifacts") == 0
