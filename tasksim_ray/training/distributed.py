"""Budgeted multi-task pretraining, data-parallel with Ray Train (``TorchTrainer``, DDP).

For pretraining runs too large for one worker (``transfer.budget.workers`` > 1). Every worker
draws the same epoch of N budget samples (same seed), keeps every world-size-th one, and trains
one DDP replica through the same ``training.loop.fit`` as one-worker pretraining; gradients are
averaged, so an epoch still sees exactly N samples. Each epoch's record is reported to Ray Train
by the loop's epoch hook; worker 0 writes the checkpoint folder with the same writer, in the same
format and under the same key, as single-worker pretraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
import torch
from ray import train
from ray.train.torch import TorchTrainer, prepare_model

from tasksim_ray.config import BudgetConfig, ModelConfig
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.models import build_model
from tasksim_ray.training.checkpoint import write_model_dir
from tasksim_ray.training.loop import FitOptions, fit
from tasksim_ray.training.pretrain import model_hparams
from tasksim_ray.training.sampler import BudgetSampler, ShardSampler
from tasksim_ray.training.subsets import SubsetData, flatten_pools, subset_metrics, subset_model_info


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``fit`` on a DDP replica with this rank's shard of every epoch; rank 0
    writes the checkpoint. Every rank validates (the same weights), so all agree on the best epoch."""
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    data: SubsetData = config["data"]
    budget: BudgetConfig = config["budget"]
    split, seed = config["split"], config["seed"]
    graphs = unpack_graphs(ray.get(config["store"]))
    flat, y, pools, mean, std = flatten_pools(graphs, data)
    sampler = BudgetSampler(pools, split[0], budget.sampling, budget.temperature, seed)
    torch.manual_seed(seed)
    model = build_model(config["model"].backbone, model_hparams(config["model"]) | {"n_tasks": len(data.tasks)})
    ddp = prepare_model(model)
    opts = FitOptions(split[1], None, max(1, budget.batch_size // world), budget.lr,  # the one-worker global batch
                      sampler=ShardSampler(sampler, rank, world), on_epoch_end=train.report,
                      stage="subset-pretrain", task="+".join(data.tasks), loss=budget.loss)
    result = fit(ddp, flat, y, [graphs[i] for i in data.val_pos], data.val_y, opts, seed, mean, std,
                 next(model.parameters()).device)
    if rank == 0:
        info = subset_model_info(config["model"], data, mean, std,
                                 subset_metrics(result, data, split, sampler) | {"workers": world})
        write_model_dir(Path(config["out_dir"]), model, info, "subset-model", result.history)


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
