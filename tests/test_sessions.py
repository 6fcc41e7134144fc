"""A tasksim driver killed with SIGKILL leaves Ray's agents running; the next local start stops them
(and only them: they are found by the killed driver's own temp dir)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasksim_ray.infra import sessions

DRIVER = """
import sys, time
from tasksim_ray.config import RayConfig
from tasksim_ray.infra.runtime import ensure_ray
import ray
ensure_ray(RayConfig(num_cpus=1))
print(ray._private.worker.global_worker.node.get_temp_dir_path(), flush=True)
time.sleep(600)
"""


def _using(temp_dir: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if sessions._uses(p, temp_dir)]


@pytest.mark.ray
def test_agents_of_a_killed_driver_are_stopped_by_the_next_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        temp_dir = driver.stdout.readline().strip()  # type: ignore[union-attr]
        assert temp_dir.startswith(str(sessions.ROOT))
        time.sleep(3)  # the agents are up
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not [p for p in _using(temp_dir) if p.ppid() == 1]:
            time.sleep(0.5)
        orphans = _using(temp_dir)
        assert orphans, "expected Ray's agents to outlive the killed driver"
        killed = sessions.reap_orphans()
        assert {p.pid for p in orphans} <= set(killed)
        assert _using(temp_dir) == [] and not Path(temp_dir).exists()
    finally:
        if driver.poll() is None:
            driver.kill()
