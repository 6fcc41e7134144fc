"""A multi-task pretraining run's data: each task's pool of labelled training molecules (graph-store
positions) and the union of their validation molecules, flattened to one sample per label."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tasksim_ray.config import ModelConfig
from tasksim_ray.infra.cache import stable_hash
from tasksim_ray.models import TaskModelInfo
from tasksim_ray.training.loop import TrainResult
from tasksim_ray.training.pretrain import model_hparams
from tasksim_ray.training.sampler import BudgetSampler


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


def combine_pools(data_key: str, pools: list[TaskPool]) -> SubsetData:
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
    key = stable_hash(data_key, [p.task for p in pools], [p.rows for p in pools], val_rows)
    return SubsetData(tuple(p.task for p in pools), tuple(p.pos for p in pools), tuple(p.y for p in pools),
                      val_pos, val_y, key)


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


def subset_metrics(result: TrainResult, data: SubsetData, split: tuple[int, int],
                   sampler: BudgetSampler) -> dict[str, Any]:
    """What a subset pretraining reports, in-process or on Ray Train workers: the training result
    and how much of the budget and of the labels it used."""
    n_per_epoch, epochs = split
    metrics = {k: v for k, v in asdict(result).items() if k not in ("history", "n_train")}
    return metrics | {"tasks": list(data.tasks), "samples_per_epoch": n_per_epoch, "epochs": epochs,
                      "samples_seen": n_per_epoch * epochs, "labels_available": data.n_labels,
                      "labels_used": sampler.unique_seen(), "task_counts": sampler.counts.tolist()}


def subset_model_info(model_cfg: ModelConfig, data: SubsetData, mean: np.ndarray, std: np.ndarray,
                      metrics: dict[str, Any]) -> TaskModelInfo:
    """The checkpoint's description of a multi-task model: one output and target scaling per task."""
    return TaskModelInfo(model_cfg.backbone, model_hparams(model_cfg) | {"n_tasks": len(data.tasks)},
                         "+".join(data.tasks), "", mean.tolist(), std.tolist(), metrics)
