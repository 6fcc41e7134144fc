"""Budgeted multi-task pretraining data-parallel on Ray Train workers (real local Ray, DDP on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tasksim_ray.config import load_config
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import read_manifest
from tasksim_ray.infra.progress import Console
from tasksim_ray.models import load_checkpoint
from tasksim_ray.training.multitask import pretrain_subset, subset_dir
from tasksim_ray.transfer.runner import build_context

from .conftest import TINY_CONFIG


@pytest.mark.usefixtures("ray_local")
def test_two_worker_pretraining_writes_a_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, {"workdir": str(tmp_path), "transfer.budget.workers": 2,
                                    "transfer.budget.worker_cpus": 0.5})
    ctx = build_context(cfg, Console(quiet=True), need_similarity=False)
    data = ctx.data.subset(["mu", "homo"])
    split = cfg.transfer.budget.resolved()[0]
    out = subset_dir(tmp_path / "subset-models", data, cfg.model, cfg.transfer.budget, split, cfg.seed)
    store = ctx.data.store()
    metrics = pretrain_subset(store, data, cfg.model, cfg.transfer.budget, split, cfg.seed, str(out))
    assert metrics == read_manifest(out)["metrics"]
    assert metrics["workers"] == 2 and metrics["samples_seen"] == split[0] * split[1]
    assert np.isfinite(metrics["best_val_mae"])
    model, info = load_checkpoint(out)
    assert info.task == "mu+homo" and len(info.target_mean) == 2
    graphs = unpack_graphs(store)
    with torch.no_grad():
        pred = model(Batch.from_data_list(graphs[:5]))
    assert pred.shape == (5, 2) and torch.isfinite(pred).all()
    # a different artifact from one-worker pretraining, which is not bit-identical
    one = subset_dir(tmp_path / "subset-models", data, cfg.model, cfg.transfer.budget.model_copy(update={"workers": 1}),
                     split, cfg.seed)
    assert one != out
