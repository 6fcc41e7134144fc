"""A multi-task pretraining run's data: each task's pool of labelled training molecules (graph-store
positions) and the union of their validation molecules, flattened to one sample per label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasksim_ray.infra.cache import stable_hash


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
