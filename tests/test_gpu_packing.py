"""Fractional-GPU packing of embedding actors, on a logical GPU (Ray's num_gpus=1 on a CPU box).

Runs in a subprocess so it gets its own Ray instance with a GPU resource. Four task models ask
for 0.25 GPU each; the chained pipeline needs all four actors alive at once, so it finishes
only if they pack onto the one GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path
import ray, torch
from tasksim_ray.config import EmbedConfig, RayConfig
from tasksim_ray.embedding.service import embed_table, graph_table, read_embedded
from tasksim_ray.models import TaskModelInfo, save_checkpoint
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.infra.runtime import ensure_ray

work = Path(sys.argv[1])
ensure_ray(RayConfig(num_cpus=2, num_gpus=1))
dirs = {}
for i in range(4):
    torch.manual_seed(i)
    dirs[f"t{i}"] = work / f"m{i}"
    save_checkpoint(dirs[f"t{i}"], DMPNN(hidden_dim=8, ffn_hidden_dim=4, depth=2),
                    TaskModelInfo("dmpnn", {"hidden_dim": 8, "ffn_hidden_dim": 4, "depth": 2}, f"t{i}", "", 0.0, 1.0))
smiles = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "C1CCCCC1", "OCCO"]
frame, _ = graph_table(smiles, [f"p{i}" for i in range(len(smiles))])
frame.to_parquet(work / "probe.parquet")
free = []
stop = threading.Event()
def watch():
    while not stop.is_set():
        free.append(ray.available_resources().get("GPU", 0.0))
        time.sleep(0.05)
watcher = threading.Thread(target=watch)
watcher.start()
embed_table(work / "probe.parquet", dirs, EmbedConfig(gpu_fraction=0.25, batch_size=3), work / "out")
stop.set(); watcher.join()
ids, embs = read_embedded(work / "out", list(dirs))
print(json.dumps({"n": len(ids), "shapes": [list(e.shape) for e in embs.values()],
                  "min_free_gpu": min(free), "total_gpu": ray.cluster_resources()["GPU"]}))
ray.shutdown()
"""


def test_four_embedders_share_one_gpu(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={"RAY_ADDRESS": "", **_env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 6 and result["shapes"] == [[6, 8]] * 4
    assert result["total_gpu"] == 1.0
    assert result["min_free_gpu"] < 1e-6  # all four 0.25-GPU actors held the one GPU at once


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
