"""Shared fixtures: one real local Ray instance (2 CPUs) for the whole session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
TINY_DATA = REPO / "tests" / "data" / "qm9_motse_600.csv"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    os.environ.pop("RAY_ADDRESS", None)  # tests always start their own local instance
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
