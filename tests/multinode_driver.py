"""The driver of tests/test_multinode.py: one phase of a tiny run on a multi-node Ray cluster.

Runs as its own process (``python -m tests.multinode_driver ADDRESS WORKDIR PHASE LOG OUT``) so the
test can kill a worker node under it. ``pipeline`` runs ``tasksim run``'s pipeline, ``cells`` the
learning-curve cells of one target; either way every pretraining job and every cell appends a
``start`` and an ``end`` line (job key, node id) to LOG, so the test sees where each job ran, what
the killed node was running, and how often each job ran. Writes what it made as JSON to OUT (not
stdout: Ray prints its own retry notices there, after the driver's last line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import ray

from tasksim_ray.config import load_config
from tasksim_ray.infra.progress import Console
from tasksim_ray.stages import pipeline
from tasksim_ray.training import pretrain
from tasksim_ray.transfer import cells

from .conftest import TINY_CONFIG

# the smallest run that still pretrains, embeds on two hosts and fine-tunes cells, one torch thread
# per job and per host: on 2 cores, three raylets share the machine with it
SETS: dict[str, Any] = {
    "ray.pending_timeout_s": 60, "embed.hosts": 2, "embed.threads": 1,
    "data.targets": ["mu", "alpha", "homo", "lumo"], "train.max_epochs": 3, "train.patience": 3,
    "train.n_train": 150, "train.n_val": 20, "model.hidden_dim": 16, "model.ffn_hidden_dim": 16,
    "transfer.tasks": ["mu", "alpha"], "transfer.folds": 2,
    "transfer.finetune.max_epochs": 5, "transfer.finetune.patience": 5}


def logged(fn: Any, log: str, key_of: Any) -> Any:
    """``fn`` that records where and when it ran (a Ray task body, shipped by value)."""
    def body(*args: Any) -> Any:
        line = {"key": key_of(args), "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
        with open(log, "a") as fh:
            fh.write(json.dumps(line | {"event": "start"}) + "\n")
        out = fn(*args)
        with open(log, "a") as fh:
            fh.write(json.dumps(line | {"event": "end"}) + "\n")
        return out
    return body


def main(address: str, workdir: Path, phase: str, log: str) -> dict[str, Any]:
    ray.init(address=address, log_to_driver=False)
    cfg = load_config(TINY_CONFIG, SETS | {"workdir": str(workdir)})
    console = Console(quiet=True)
    if phase == "pipeline":
        pretrain.train_one = logged(pretrain.train_one, log, lambda a: a[1].task)
        result = pipeline.run_pipeline(cfg, console, until="embed")
        embeddings = sorted(p.parent.name for p in result.artifact.glob("*/manifest.json"))
        return {"models": {t: str(d) for t, d in result.model_dirs.items()}, "embeddings": embeddings,
                "host_nodes": result.timings["embed"]["host_nodes"]}
    from tasksim_ray.transfer.runner import run_transfer

    cells.run_cell = logged(cells.run_cell, log, lambda a: f"{a[2].label} n={a[1].size} fold {a[1].fold}")
    result = run_transfer(cfg, ["curves"], console, target="alpha", sources=["mu"])
    curves = result["studies"]["curves"]["curves"]
    return {"curves": {label: c["auc_mean"] for label, c in curves.items()}}


if __name__ == "__main__":
    Path(sys.argv[5]).write_text(json.dumps(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4])))
