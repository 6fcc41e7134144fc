"""Multi-task pretraining on a subset of tasks under a budget C = N samples x E epochs.

One shared encoder, one output per task, and a masked loss: a sample is one (molecule, task)
label, so a molecule contributes only the targets it has. Each epoch the budget sampler draws N
samples across the subset's tasks (uniform over tasks by default); training runs exactly E epochs
(the budget is the point of the experiment) and keeps the best-validation weights. A checkpoint
is cached by its subset, data, budget split and settings, so every study and search that asks
for the same pretraining reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from tasksim_ray.config import BudgetConfig, ModelConfig
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import Artifacts, artifact_key, read_manifest
from tasksim_ray.infra.jobs import Job, ManifestResults, start_jobs
from tasksim_ray.models import backbone_version, build_model
from tasksim_ray.training.checkpoint import write_model_dir
from tasksim_ray.training.device import choose_device
from tasksim_ray.training.loop import FitOptions, fit
from tasksim_ray.training.pretrain import model_hparams
from tasksim_ray.training.sampler import BudgetSampler
from tasksim_ray.training.subsets import SubsetData, flatten_pools, subset_metrics, subset_model_info


@dataclass(frozen=True)
class SubsetModel:
    tasks: tuple[str, ...]
    split: tuple[int, int]
    directory: Path
    metrics: dict[str, Any]


def pretrain_subset(store: dict[str, torch.Tensor], data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig,
                    split: tuple[int, int], seed: int, out_dir: str, num_threads: int = 1) -> dict[str, Any]:
    """Train one multi-task model and write its checkpoint folder atomically (a Ray task body);
    with ``budget.workers`` > 1 the training runs data-parallel on Ray Train workers."""
    if budget.workers > 1:
        from tasksim_ray.training.distributed import pretrain_subset_ray_train

        pretrain_subset_ray_train(ray.put(store), data, model_cfg, budget, split, seed, out_dir,
                                  str(Path(out_dir).parent.resolve() / "_ray_train"))
        return read_manifest(Path(out_dir))["metrics"]
    torch.set_num_threads(num_threads)
    device = choose_device()
    graphs = unpack_graphs(store)
    n_tasks = len(data.tasks)
    flat_graphs, y_train, pools, mean, std = flatten_pools(graphs, data)
    n_per_epoch, epochs = split
    sampler = BudgetSampler(pools, n_per_epoch, budget.sampling, budget.temperature, seed)
    torch.manual_seed(seed)
    hp = model_hparams(model_cfg) | {"n_tasks": n_tasks}
    model = build_model(model_cfg.backbone, hp)
    opts = FitOptions(epochs, None, budget.batch_size, budget.lr, sampler=sampler, stage="subset-pretrain",
                      task="+".join(data.tasks), loss=budget.loss)
    result = fit(model, flat_graphs, y_train, [graphs[i] for i in data.val_pos], data.val_y, opts, seed,
                 mean, std, device)
    info = subset_model_info(model_cfg, data, mean, std, subset_metrics(result, data, split, sampler))
    write_model_dir(Path(out_dir), model, info, "subset-model", result.history)
    return info.metrics


def subset_key(data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig, split: tuple[int, int],
               seed: int) -> str:
    settings = budget.model_dump(include={"sampling", "temperature", "lr", "batch_size"})
    if budget.loss != "mse":  # the loss keys a checkpoint only where it is not the original one
        settings["loss"] = budget.loss
    if budget.workers > 1:  # data-parallel training is not bit-identical to one worker
        settings["workers"] = budget.workers
    return artifact_key("subset-model", backbone_version(model_cfg.backbone), data.tasks, data.content_key,
                        model_cfg.model_dump(), settings,
                       list(split), seed)


def subset_dir(root: Path, data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig, split: tuple[int, int],
               seed: int) -> Path:
    """Where this pretraining's checkpoint lives: named by its tasks and split, keyed by content."""
    key = subset_key(data, model_cfg, budget, split, seed)
    return root / f"{'+'.join(data.tasks)[:60]}-{split[0]}x{split[1]}-{key}"


def all_labels_run(data: SubsetData, budget: BudgetConfig, epochs: int) -> tuple[BudgetConfig, tuple[int, int]]:
    """The budget and split that use every pool label of ``data`` once per epoch for ``epochs``
    epochs: N = all labels, shared proportionally to the pools (so each task's count is its pool
    size and the sampler draws whole permutations). A larger task set then sees more data, as when
    each arm is pretrained on all of its tasks' labels (paper 000's subset protocol)."""
    return budget.model_copy(update={"sampling": "proportional"}), (data.n_labels, epochs)


def submit_subsets(store_ref: ray.ObjectRef, jobs: list[tuple[SubsetData, tuple[int, int]]],
                   model_cfg: ModelConfig, budget: BudgetConfig, seed: int, root: Path, num_cpus: float,
                   num_gpus: float) -> tuple[list[Path], dict[str, ray.ObjectRef]]:
    """Start every (subset, split) pretraining that is not cached (the same one asked twice runs
    once); returns each job's checkpoint folder and the running ones' refs by folder, so
    fine-tuning cells can wait on exactly theirs."""
    dirs = [subset_dir(root, data, model_cfg, budget, split, seed) for data, split in jobs]
    runs = [Job(d.name, d.name, pretrain_subset, (store_ref, data, model_cfg, budget, split, seed, str(d),
                                                   max(1, int(num_cpus))), num_cpus, num_gpus,
                title=f"pretrain-subset:{'+'.join(data.tasks)} {split[0]}x{split[1]}")
            for d, (data, split) in zip(dirs, jobs)]
    _, running = start_jobs(runs, ManifestResults(Artifacts(root, "subset-model"), "metrics"))
    return dirs, {str(root / key): ref for key, ref in running.items()}


def subset_model(directory: Path) -> SubsetModel:
    """A finished pretraining, read back from its folder."""
    metrics = read_manifest(directory)["metrics"]
    split = (int(metrics["samples_per_epoch"]), int(metrics["epochs"]))
    return SubsetModel(tuple(metrics["tasks"]), split, directory, metrics)
