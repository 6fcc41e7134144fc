"""Preprocessing as in the RSA study on QM9: drop redundant targets, one shared split, folds.

Order rule of the target filter: targets are visited in the table's order (the config's
``data.targets`` order, or the loader's); a target is dropped when |Pearson r| with any target
already kept exceeds the threshold. Correlations use training molecules only (pairwise-complete
labels), so validation and test labels never influence which tasks exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
