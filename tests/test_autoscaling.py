"""The embedding stage on Ray's fake multi-node autoscaler (``RAY_FAKE_CLUSTER=1``).

The head (``cluster/fake/cluster.yaml``, rendered with its GCS address) has no CPU and no GPU; its
autoscaler adds ``gpu_worker`` nodes (2 CPUs, 1 logical GPU each, real raylets on this machine)
on demand and removes them after a 6 s idle timeout. Four task models asking for 0.25 GPU each
must scale the cluster up, share a fake GPU (two or more on one node at once), embed exactly what
they embed in-process, and leave the cluster at zero GPU nodes. Every process of the cluster is
stopped by its temp dir; the fake worker nodes' raylets are seen coming and going.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

from .conftest import REPO, free_port, ray_processes, stop_ray_processes

pytestmark = pytest.mark.ray

RAY = str(Path(sys.executable).parent / "ray")
FAKE_CONFIG = REPO / "cluster" / "fake" / "cluster.yaml"


@contextmanager
def fake_cluster() -> Iterator[tuple[str, str]]:
    """Start the fake cluster's head; yield (GCS address, temp dir); stop its processes, worker nodes included."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rf")  # short: Ray's socket paths live under it
    port = free_port()
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # where the fake provider's nodes join
    rendered = Path(temp_dir) / "autoscaling.yaml"
    rendered.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--autoscaling-config={rendered}", "--num-cpus=0", "--num-gpus=0", "--object-store-memory=100000000",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        stop_ray_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_embedding_scales_gpu_workers_up_packs_them_and_scales_down(tmp_path: Path) -> None:
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}
    seen: dict[int, psutil.Process] = {}
    raylets: set[int] = set()  # the head's and every fake worker node's
    with fake_cluster() as (address, temp_dir):
        driver = subprocess.Popen([sys.executable, "-m", "tests.fake_cluster_driver", address, str(tmp_path)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while driver.poll() is None and time.monotonic() - start < 240:  # the fake worker nodes come and go
            seen |= {p.pid: p for p in ray_processes(temp_dir)}
            raylets |= {p.pid for p in seen.values() if p.is_running() and p.name() == "raylet"}
            time.sleep(1)
        if driver.poll() is None:
            driver.kill()
        out, err = driver.communicate()
    assert driver.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), f"raylets {len(raylets)}, processes {len(seen)}, {time.monotonic() - start:.0f} s")

    assert result["before"] == {"gpu": 0.0, "nodes": 1}  # the head alone, no GPU
    assert result["most_gpu_nodes"] >= 1  # scaled up for the pending 0.25-GPU actors
    embedders = result["embedders"]
    assert len(embedders) == 4 and all(e["gpu"] == 0.25 and e["restarts"] == 0 for e in embedders)
    # all four held their GPU share at the same moment, so a node that ran two or more ran them at once
    assert result["most_gpu_used"] == pytest.approx(1.0)
    assert max(Counter(e["node"] for e in embedders).values()) >= 2  # packed onto one fake GPU node
    assert result["n"] == 20 and len(result["shapes"]) == 4
    assert result["max_abs_err"] < 1e-5  # the cluster's embeddings are the in-process ones
    assert result["gpu_nodes_after"] == [] and result["scale_down_s"] < 60  # idle GPU nodes removed
    assert len(raylets) >= 2 and not any(p.is_running() for p in seen.values())  # every process we saw is gone
    assert ray_processes(temp_dir) == []
    assert time.monotonic() - start < 240
