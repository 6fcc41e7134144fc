"""Preprocessing as in the RSA study on QM9: drop redundant targets, one shared split, folds.

The shared split is seeded and random, or (``data.split`` other than ``random``) the user's own:
published split files, a split column or a split file.

Order rule of the target filter: targets are visited in the table's order (the config's
``data.targets`` order, or the loader's); a target is dropped when |Pearson r| with any target
already kept exceeds the threshold. Correlations use training molecules only (pairwise-complete
labels), so validation and test labels never influence which tasks exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasksim_ray.config import SplitConfig
from tasksim_ray.data.splits import PARTS, load_splits
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError


@dataclass(frozen=True)
class DroppedTask:
    name: str
    because_of: str
    pearson_r: float


@dataclass
class Split:
    """Row indices into the task table; the same molecules sit in the same split for every task."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    folds: np.ndarray  # (n_folds, n_train): each row a seeded permutation of ``train``


def split_molecules(n: int, fractions: tuple[float, float, float], n_folds: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    train, val, test = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    folds = np.stack([rng.permutation(train) for _ in range(n_folds)])
    return Split(np.sort(train), np.sort(val), np.sort(test), folds)


def given_split(cfg: SplitConfig, table: TaskTable, n_folds: int, seed: int) -> Split:
    """The shared split from the user's split source (its first seed): each row goes where its
    tasks' splits put it (a crystal folder's files have rows of their own, so per-file published
    splits combine); a row one task trains on and another tests on is an error naming both."""
    where: dict[int, tuple[str, str]] = {}
    for task in table.names:
        for part, rows in zip(PARTS, load_splits(cfg.model_copy(update={"seeds": cfg.seeds[:1]}), table, task)[0]):
            for r in rows.tolist():
                seen = where.setdefault(r, (part, task))
                if seen[0] != part:
                    raise TasksimError(f"data.split: row {r} is {seen[0]} for task '{seen[1]}' but {part} for "
                                       f"'{task}'; the learning-curve studies need one split for all tasks")
    train, val, test = (np.array(sorted(r for r, (p, _) in where.items() if p == part), dtype=np.int64)
                        for part in PARTS)
    rng = np.random.default_rng(seed)
    return Split(train, val, test, np.stack([rng.permutation(train) for _ in range(n_folds)]))


def filter_correlated(labels: pd.DataFrame, threshold: float) -> tuple[list[str], list[DroppedTask]]:
    """Keep targets in column order unless |r| > threshold with an already-kept one."""
    corr = labels.corr(method="pearson")
    kept: list[str] = []
    dropped: list[DroppedTask] = []
    for name in labels.columns:
        clash = [(k, float(corr.loc[name, k])) for k in kept if abs(corr.loc[name, k]) > threshold]
        if clash:
            partner, r = max(clash, key=lambda kr: abs(kr[1]))
            dropped.append(DroppedTask(name, partner, round(r, 4)))
        else:
            kept.append(name)
    return kept, dropped
