"""One search trial: pretrain (or reuse) the subset model, then fine-tune the targets epoch by epoch.

Pretraining is keyed by content exactly as in the transfer studies, and guarded by a file lock,
so two trials (or a study and a trial) asking for the same subset and split train it once. The
targets are fine-tuned in lockstep; after every epoch the trial reports the mean, over targets,
of the best standardised validation MAE so far (``objective``) with a checkpoint of every
trainer, so ASHA can stop it there and a resumed search continues from that epoch.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from ray import tune

from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import is_complete
from tasksim_ray.search.space import SpaceSpec, decode
from tasksim_ray.training.device import choose_device
from tasksim_ray.training.loop import Trainer
from tasksim_ray.training.multitask import pretrain_subset, subset_dir
from tasksim_ray.training.subsets import TaskPool, combine_pools
from tasksim_ray.transfer.cells import CellData, finetune_setup, test_mae

STATE_FILE = "trainers.pkl"


@dataclass(frozen=True)
class SearchJob:
    """Everything a trial needs, shipped once to the object store by ``tune.with_parameters``."""

    spec: SpaceSpec
    store: dict[str, torch.Tensor]
    tasks_key: str
    pools: dict[str, TaskPool]
    cells: dict[str, CellData]  # per target: its training rows at the search size, val, test
    pretrain_root: str


def pretrained_dir(job: SearchJob, subset: tuple[str, ...], recipe: Any, num_threads: int) -> Path:
    """The subset model's folder, trained here unless cached (or being trained by another trial)."""
    cfg = job.spec.cfg
    data = combine_pools(job.tasks_key, [job.pools[t] for t in subset])
    directory = subset_dir(Path(job.pretrain_root), data, cfg.model, recipe.budget, recipe.split, cfg.seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if not is_complete(directory):
            pretrain_subset(job.store, data, cfg.model, recipe.budget, recipe.split, cfg.seed, str(directory),
                            num_threads)
    return directory


def run_trial(config: dict[str, Any], job: SearchJob) -> None:
    """The Tune function trainable."""
    for name in ("ray.tune", "ray.train"):  # a line per checkpoint from every trial is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    recipe = decode(config, job.spec)
    threads = max(1, int(job.spec.cfg.search.cpus_per_trial))
    torch.set_num_threads(threads)
    device = choose_device()
    directory = pretrained_dir(job, recipe.subset, recipe, threads)
    graphs = unpack_graphs(job.store)
    seed = job.spec.cfg.seed
    trainers: dict[str, Trainer] = {}
    for target, cell in job.cells.items():
        model, opts = finetune_setup(directory, recipe.finetune, seed, device)
        opts = replace(opts, stage="search", task=target)
        mean, std = float(np.mean(cell.y_train)), float(np.std(cell.y_train)) or 1.0
        trainers[target] = Trainer(model, [graphs[i] for i in cell.train_pos], cell.y_train,
                                   [graphs[i] for i in cell.val_pos], cell.y_val, opts, seed, mean, std, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            states = pickle.loads((Path(d) / STATE_FILE).read_bytes())
        for target, state in states.items():
            trainers[target].load_state_dict(state)
    while not all(t.done for t in trainers.values()):
        for t in trainers.values():
            if not t.done:
                t.run_epoch()
        metrics: dict[str, Any] = {"objective": float(np.mean([t.best_score for t in trainers.values()])),
                                   "pretrained": directory.name}
        finished = all(t.done for t in trainers.values())
        for target, t in trainers.items():
            metrics[f"val_mae_{target}"] = float(t.best_mae[0])
            metrics[f"epochs_{target}"] = t.epoch
            if finished:  # the run is over: score the early-stopped model on the test molecules once
                t.finish()
                metrics[f"test_mae_{target}"] = test_mae(t.model, graphs, job.cells[target], t.mean[0], t.std[0],
                                                         device)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / STATE_FILE).write_bytes(pickle.dumps({k: t.state_dict() for k, t in trainers.items()}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
