"""Shared fixtures: one real local Ray instance (2 CPUs) for the whole session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
TINY_DATA = REPO / "tests" / "data" / "qm9_motse_600.csv"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    os.environ.pop("RAY_ADDRESS", None)  # tests always start their own local instance
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running cluster
    yield
    ray.shutdown()


def run_cli_until(args: list[str], ready: Callable[[], bool], stop: signal.Signals, timeout: float = 300) -> None:
    """Start `tasksim ARGS` in its own process group, wait until ``ready()``, then send ``stop``
    to the group (SIGKILL if it has not ended within 90 s): a run interrupted for real."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-c", "from tasksim_ray.cli import main; main()", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, stop)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of a Ray cluster started with ``--temp-dir=temp_dir``: those whose command line
    names it, and their descendants (Ray's agents retitle themselves, dropping the path)."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                found |= {c.pid: c for c in [p, *p.children(recursive=True)]}
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop_ray_processes(temp_dir: str) -> None:
    """Stop exactly that cluster's processes (never `ray stop`: other Rays on this machine are not ours)."""
    procs = ray_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=15)
