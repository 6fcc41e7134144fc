"""Multi-task pretraining on a subset of tasks under a budget C = N samples x E epochs.

One shared encoder, one output per task, and a masked loss: a sample is one (molecule, task)
label, so a molecule contributes only the targets it has. Each epoch the budget sampler draws N
samples across the subset's tasks (uniform over tasks by default); training runs exactly E epochs
(the budget is the point of the experiment) and keeps the best-validation weights. A checkpoint
is cached by its subset, data, budget split and settings, so every study and search that asks
for the same pretraining reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from tasksim_ray import __version__
from tasksim_ray.cache import atomic_dir, is_complete, read_manifest, stable_hash, write_manifest
from tasksim_ray.config import BudgetConfig, ModelConfig
from tasksim_ray.graphstore import unpack_graphs
from tasksim_ray.models import TaskModelInfo, build_model, save_checkpoint
from tasksim_ray.pretrain import model_hparams
from tasksim_ray.train import FitOptions, fit
from tasksim_ray.transfer.sampler import BudgetSampler


@dataclass(frozen=True)
class SubsetData:
    """Pools of labelled training molecules (graph-store positions) per task, and validation."""

    tasks: tuple[str, ...]
    pool_pos: tuple[np.ndarray, ...]
    pool_y: tuple[np.ndarray, ...]
    val_pos: np.ndarray
    val_y: np.ndarray  # (n_val, n_tasks), NaN where a molecule lacks a label
    content_key: str

    @property
    def n_labels(self) -> int:
        return int(sum(len(p) for p in self.pool_pos))


@dataclass(frozen=True)
class TaskPool:
    """One task's pretraining pool and validation molecules: table rows, store positions, labels."""

    task: str
    rows: list[int]
    pos: np.ndarray
    y: np.ndarray
    val_rows: list[int]
    val_pos: np.ndarray
    val_y: np.ndarray


def combine_pools(tasks_key: str, pools: list[TaskPool]) -> SubsetData:
    """A subset's pretraining data from its tasks' pools; validation on the union of their
    validation molecules, each task labelled where it has a label (NaN elsewhere)."""
    val_rows = sorted({r for p in pools for r in p.val_rows})
    where = {r: i for i, r in enumerate(val_rows)}
    val_pos = np.zeros(len(val_rows), dtype=int)
    val_y = np.full((len(val_rows), len(pools)), np.nan)
    for t, p in enumerate(pools):
        idx = [where[r] for r in p.val_rows]
        val_pos[idx] = p.val_pos
        val_y[idx, t] = p.val_y
    key = stable_hash(tasks_key, [p.task for p in pools], [p.rows for p in pools], val_rows)
    return SubsetData(tuple(p.task for p in pools), tuple(p.pos for p in pools), tuple(p.y for p in pools),
                      val_pos, val_y, key)


@dataclass(frozen=True)
class SubsetModel:
    tasks: tuple[str, ...]
    split: tuple[int, int]
    directory: Path
    metrics: dict[str, Any]


def flatten_pools(graphs: list, data: SubsetData) -> tuple[list, np.ndarray, list[np.ndarray], np.ndarray,
                                                             np.ndarray]:
    """One sample per (molecule, task) label: graphs, (n, T) labels with NaN off the task's column,
    each task's sample indices, and per-task label mean and std."""
    n_tasks = len(data.tasks)
    flat_graphs, rows, pools, start = [], [], [], 0
    for t, (pos, y) in enumerate(zip(data.pool_pos, data.pool_y)):
        flat_graphs += [graphs[i] for i in pos]
        block = np.full((len(pos), n_tasks), np.nan)
        block[:, t] = y
        rows.append(block)
        pools.append(np.arange(start, start + len(pos)))
        start += len(pos)
    mean = np.array([float(np.mean(y)) for y in data.pool_y])
    std = np.array([float(np.std(y)) or 1.0 for y in data.pool_y])
    return flat_graphs, np.concatenate(rows), pools, mean, std


def pretrain_subset(store: dict[str, torch.Tensor], data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig,
                    split: tuple[int, int], seed: int, out_dir: str, num_threads: int = 1) -> dict[str, Any]:
    """Train one multi-task model and write its checkpoint folder atomically (a Ray task body);
    with ``budget.workers`` > 1 the training runs data-parallel on Ray Train workers."""
    if budget.workers > 1:
        from tasksim_ray.transfer.distributed import pretrain_subset_ray_train

        pretrain_subset_ray_train(ray.put(store), data, model_cfg, budget, split, seed, out_dir,
                                  str(Path(out_dir).parent.resolve() / "_ray_train"))
        return read_manifest(Path(out_dir))["metrics"]
    torch.set_num_threads(num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
    graphs = unpack_graphs(store)
    n_tasks = len(data.tasks)
    flat_graphs, y_train, pools, mean, std = flatten_pools(graphs, data)
    n_per_epoch, epochs = split
    sampler = BudgetSampler(pools, n_per_epoch, budget.sampling, budget.temperature, seed)
    torch.manual_seed(seed)
    hp = model_hparams(model_cfg) | {"n_tasks": n_tasks}
    model = build_model(model_cfg.backbone, hp)
    opts = FitOptions(epochs, None, budget.batch_size, budget.lr, sampler=sampler, stage="subset-pretrain",
                      task="+".join(data.tasks))
    result = fit(model, flat_graphs, y_train, [graphs[i] for i in data.val_pos], data.val_y, opts, seed,
                 mean, std, device)
    metrics = {k: v for k, v in asdict(result).items() if k not in ("history", "n_train")}
    metrics |= {"tasks": list(data.tasks), "samples_per_epoch": n_per_epoch, "epochs": epochs,
                "samples_seen": n_per_epoch * epochs, "labels_available": data.n_labels,
                "labels_used": sampler.unique_seen(), "task_counts": sampler.counts.tolist()}
    info = TaskModelInfo(model_cfg.backbone, hp, "+".join(data.tasks), "", mean.tolist(), std.tolist(), metrics)
    with atomic_dir(Path(out_dir)) as tmp:
        save_checkpoint(tmp, model.cpu(), info)
        write_manifest(tmp, "subset-model", Path(out_dir).name, metrics=metrics, history=result.history)
    return metrics


def subset_key(data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig, split: tuple[int, int],
               seed: int) -> str:
    settings = budget.model_dump(include={"sampling", "temperature", "lr", "batch_size"})
    if budget.workers > 1:  # data-parallel training is not bit-identical to one worker
        settings["workers"] = budget.workers
    return stable_hash("subset-model", __version__, data.tasks, data.content_key, model_cfg.model_dump(), settings,
                       list(split), seed)


def subset_dir(root: Path, data: SubsetData, model_cfg: ModelConfig, budget: BudgetConfig, split: tuple[int, int],
               seed: int) -> Path:
    """Where this pretraining's checkpoint lives: named by its tasks and split, keyed by content."""
    key = subset_key(data, model_cfg, budget, split, seed)
    return root / f"{'+'.join(data.tasks)[:60]}-{split[0]}x{split[1]}-{key}"


def submit_subsets(store_ref: ray.ObjectRef, jobs: list[tuple[SubsetData, tuple[int, int]]],
                   model_cfg: ModelConfig, budget: BudgetConfig, seed: int, root: Path, num_cpus: float,
                   num_gpus: float) -> tuple[list[Path], dict[str, ray.ObjectRef]]:
    """Start every (subset, split) pretraining that is not cached; returns each job's checkpoint
    folder and the running ones' refs by folder, so fine-tuning cells can wait on exactly theirs."""
    remote = ray.remote(pretrain_subset).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)
    pending: dict[str, ray.ObjectRef] = {}
    dirs = []
    for data, split in jobs:
        directory = subset_dir(root, data, model_cfg, budget, split, seed)
        dirs.append(directory)
        if not is_complete(directory) and str(directory) not in pending:  # the same pretraining asked twice runs once
            pending[str(directory)] = remote.remote(store_ref, data, model_cfg, budget, split, seed, str(directory),
                                                    max(1, int(num_cpus)))
    return dirs, pending


def subset_model(directory: Path) -> SubsetModel:
    """A finished pretraining, read back from its folder."""
    metrics = read_manifest(directory)["metrics"]
    split = (int(metrics["samples_per_epoch"]), int(metrics["epochs"]))
    return SubsetModel(tuple(metrics["tasks"]), split, directory, metrics)
