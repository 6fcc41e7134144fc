"""The driver of tests/test_autoscaling.py: embeds a probe set on a fake autoscaling cluster.

Runs as its own process (``python -m tests.fake_cluster_driver ADDRESS WORKDIR``) so that it is a
fresh Ray driver with the cluster's token auth, whatever Ray the test session already holds. It
prints one JSON line: what it saw of the cluster before, during and after the embedding, and how
the cluster's embeddings compare with the same checkpoints run in this process.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.util.state import list_actors

from tasksim_ray.config import EmbedConfig
from tasksim_ray.embedding.hosts import ModelHost
from tasksim_ray.embedding.service import GRAPH, ID, embed_table, graph_table, read_embedded
from tasksim_ray.infra.runtime import quiet_ray_data
from tasksim_ray.models import TaskModelInfo, build_model, save_checkpoint

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "C1CCCCC1", "OCCO", "CC#N", "CCOC", "c1ccncc1", "CC(C)O",
          "O=C=O", "CCCl", "CC(=O)N", "C1CCOC1", "CCS", "c1ccoc1", "NCCO", "CC=O", "CCCC", "OC(=O)CO"]
HPARAMS = {"hidden_dim": 16, "ffn_hidden_dim": 8, "depth": 2}
N_MODELS = 4


def gpu_nodes() -> list[str]:
    """Alive nodes that have a GPU: on this cluster, only the fake GPU workers."""
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]


class Watcher(threading.Thread):
    """Samples the cluster while the pipeline runs (GCS calls, cheap enough for every 0.1 s): the
    most GPU nodes alive at once and the most GPU in use at once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.most_gpu_nodes = 0
        self.most_gpu_used = 0.0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            used = ray.cluster_resources().get("GPU", 0.0) - ray.available_resources().get("GPU", 0.0)
            self.most_gpu_used = max(self.most_gpu_used, used)
            self.most_gpu_nodes = max(self.most_gpu_nodes, len(gpu_nodes()))


def placement(address: str) -> list[dict[str, Any]]:
    """Every model host the cluster ran (``ModelHost`` actors),
    alive or dead: its node, what it asked for, whether it was restarted. The address is named:
    without it the state API refuses a machine that runs several Rays."""
    actors = list_actors(address, detail=True, limit=1000, raise_on_missing_output=False)
    return [{"node": a.node_id, "gpu": a.required_resources.get("GPU", 0.0), "restarts": a.num_restarts}
            for a in actors if "ModelHost" in a.class_name]


def local_embeddings(frame: Any, dirs: dict[str, Path]) -> dict[str, np.ndarray]:
    """The same graphs through the same checkpoints, in this process."""
    host = ModelHost(budget_bytes=1 << 30)
    return host.embed(frame[GRAPH].to_numpy(), {name: str(d) for name, d in dirs.items()})


def main(address: str, work: Path) -> dict[str, Any]:
    ray.init(address=address, log_to_driver=False)
    quiet_ray_data()
    before = {"gpu": ray.cluster_resources().get("GPU", 0.0), "nodes": sum(n["Alive"] for n in ray.nodes())}
    dirs = {}
    for i in range(N_MODELS):
        torch.manual_seed(i)
        dirs[f"t{i}"] = work / f"m{i}"
        save_checkpoint(dirs[f"t{i}"], build_model("dmpnn", HPARAMS),
                        TaskModelInfo("dmpnn", HPARAMS, f"t{i}", "", 0.0, 1.0))
    frame, _ = graph_table(SMILES, [f"p{i:02d}" for i in range(len(SMILES))])
    frame.to_parquet(work / "probe.parquet")

    watcher = Watcher()
    watcher.start()
    start = time.monotonic()
    embed_table(work / "probe.parquet", dirs, EmbedConfig(gpu_fraction=0.25, use_gpu="always", batch_size=5),
                work / "out")
    embed_s = time.monotonic() - start
    watcher.stop.set()
    watcher.join()
    embedders = placement(address)

    ids, embs = read_embedded(work / "out", list(dirs))
    local = local_embeddings(frame.sort_values(ID), dirs)
    max_err = max(float(np.abs(embs[n] - local[n]).max()) for n in dirs)

    start = time.monotonic()
    while gpu_nodes() and time.monotonic() - start < 90:
        time.sleep(0.5)
    return {"before": before, "embed_s": embed_s, "n": len(ids), "shapes": [list(e.shape) for e in embs.values()],
            "max_abs_err": max_err, "most_gpu_nodes": watcher.most_gpu_nodes, "most_gpu_used": watcher.most_gpu_used,
            "embedders": embedders, "gpu_nodes_after": gpu_nodes(),
            "scale_down_s": time.monotonic() - start}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
