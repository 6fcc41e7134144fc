"""Budgeted multi-task pretraining, data-parallel with Ray Train (``TorchTrainer``, DDP).

For pretraining runs too large for one worker (``transfer.budget.workers`` > 1). Every worker
draws the same epoch of N budget samples (same seed), keeps every world-size-th one, and trains
one DDP replica; gradients are averaged, so an epoch still sees exactly N samples. Worker 0
validates after each epoch, keeps the best weights and writes the checkpoint folder in the same
format, and under the same key, as single-worker pretraining.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import train
from ray.train.torch import TorchTrainer, prepare_model

from tasksim_ray.config import BudgetConfig, ModelConfig
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import atomic_dir, write_manifest
from tasksim_ray.models import TaskModelInfo, build_model, save_checkpoint
from tasksim_ray.training.loop import masked_mae, predict, with_targets
from tasksim_ray.training.objectives import masked_mse
from tasksim_ray.training.pretrain import model_hparams
from tasksim_ray.training.sampler import BudgetSampler
from tasksim_ray.training.subsets import SubsetData, flatten_pools


def _worker_loop(config: dict[str, Any]) -> None:
    from torch_geometric.loader import DataLoader

    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    data: SubsetData = config["data"]
    budget: BudgetConfig = config["budget"]
    n_per_epoch, epochs = config["split"]
    seed = config["seed"]
    graphs = unpack_graphs(ray.get(config["store"]))
    flat, y, pools, mean, std = flatten_pools(graphs, data)
    train_data = with_targets(flat, (y - mean) / std)
    sampler = BudgetSampler(pools, n_per_epoch, budget.sampling, budget.temperature, seed)
    torch.manual_seed(seed)
    model = build_model(config["model"].backbone, model_hparams(config["model"]) | {"n_tasks": len(data.tasks)})
    ddp = prepare_model(model)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(ddp.parameters(), lr=budget.lr)
    per_worker_batch = max(1, budget.batch_size // world)  # the same global batch as one worker
    val = [graphs[i] for i in data.val_pos]
    best, best_state, history = float("inf"), copy.deepcopy(model.state_dict()), []
    for epoch in range(epochs):
        shard = list(iter(sampler))[rank::world]
        ddp.train()
        with ddp.join():  # shards may differ by one sample, so batch counts may too
            for batch in DataLoader([train_data[i] for i in shard], batch_size=per_worker_batch):
                batch = batch.to(device)
                opt.zero_grad()
                loss = masked_mse(ddp(batch), batch.y)
                loss.backward()
                opt.step()
        if rank == 0:
            mae = masked_mae(np.atleast_2d(predict(model, val, 256, device).T).T * std + mean, data.val_y)
            score = float(np.nanmean(mae / std))
            history.append({"epoch": epoch, "val_score": score})
            if score < best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    if rank == 0:
        model.load_state_dict(best_state)
        metrics = {"best_val_mae": best, "epochs": epochs, "samples_per_epoch": n_per_epoch, "workers": world,
                   "tasks": list(data.tasks), "samples_seen": n_per_epoch * epochs, "labels_available": data.n_labels,
                   "labels_used": sampler.unique_seen(), "task_counts": sampler.counts.tolist()}
        info = TaskModelInfo(config["model"].backbone, model_hparams(config["model"]) | {"n_tasks": len(data.tasks)},
                             "+".join(data.tasks), "", mean.tolist(), std.tolist(), metrics)
        out = Path(config["out_dir"])
        with atomic_dir(out) as tmp:
            save_checkpoint(tmp, model.cpu(), info)
            write_manifest(tmp, "subset-model", out.name, metrics=metrics, history=history)
    train.report({"done": 1})


def pretrain_subset_ray_train(store_ref: ray.ObjectRef, data: SubsetData, model_cfg: ModelConfig,
                              budget: BudgetConfig, split: tuple[int, int], seed: int, out_dir: str,
                              storage_path: str) -> None:
    """Run the pretraining on ``budget.workers`` Ray Train workers and wait for the checkpoint."""
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"store": store_ref, "data": data, "model": model_cfg, "budget": budget,
                           "split": split, "seed": seed, "out_dir": out_dir},
        scaling_config=train.ScalingConfig(num_workers=budget.workers, use_gpu=budget.worker_gpus > 0,
                                           resources_per_worker={"CPU": budget.worker_cpus,
                                                                 **({"GPU": budget.worker_gpus}
                                                                    if budget.worker_gpus else {})}),
        run_config=train.RunConfig(name=f"pretrain-{Path(out_dir).name}", storage_path=storage_path))
    trainer.fit()
