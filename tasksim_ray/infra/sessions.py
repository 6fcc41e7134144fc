"""The local Ray instances tasksim starts, and the clean-up of those whose driver was killed.

A driver that dies with SIGKILL (or a lost terminal) takes its raylet and GCS with it, but Ray's
agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are re-parented and keep running. Each
local instance tasksim starts gets its own temp dir under ``<tmp>/tasksim-ray/`` and a record of
its driver; the next start kills every process still working in the temp dir of a dead driver
(found by command line or open files, so processes of other Rays on the machine are never touched).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import psutil

ROOT = Path(tempfile.gettempdir()) / "tasksim-ray"


def new_session() -> Path:
    """A fresh temp dir for a local Ray, recorded with this driver's pid and start time."""
    ROOT.mkdir(exist_ok=True)
    temp_dir = ROOT / uuid.uuid4().hex[:10]  # short: Ray's socket paths must fit in 107 characters
    temp_dir.mkdir()
    me = psutil.Process()
    record = ROOT / f"{temp_dir.name}.json"
    record.write_text(json.dumps({"pid": me.pid, "started": me.create_time(), "temp_dir": str(temp_dir)}))
    atexit.register(record.unlink, missing_ok=True)  # a clean exit leaves nothing for the next start to scan
    return temp_dir


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0  # not a recycled pid
    except psutil.NoSuchProcess:
        return False


def _uses(proc: psutil.Process, temp_dir: str) -> bool:
    try:
        return any(temp_dir in part for part in proc.cmdline()) or any(
            f.path.startswith(temp_dir) for f in proc.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def reap_orphans() -> list[int]:
    """Kill the processes left by local Rays whose tasksim driver is gone; the pids killed."""
    killed: list[int] = []
    for record in sorted(ROOT.glob("*.json")) if ROOT.is_dir() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if _alive(info["pid"], info["started"]):
            continue
        left = [p for p in psutil.process_iter() if p.pid != psutil.Process().pid and _uses(p, info["temp_dir"])]
        for proc in left:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        shutil.rmtree(info["temp_dir"], ignore_errors=True)
        record.unlink(missing_ok=True)
    return killed
