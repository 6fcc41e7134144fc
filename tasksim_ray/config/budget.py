"""Pretraining budgets: how many labels per epoch, for how many epochs, drawn from which tasks.

A budget C = N x E fixes the number of samples seen in pretraining; trading samples per epoch (N) against epochs (E)
at a fixed C separates "more distinct labels" from "more passes over the same labels". ``BudgetSampler`` draws each
epoch's N samples across tasks by a sampling scheme and records how many distinct labels were actually used
(``tasksim_ray.training.sampler``; this module stays free of torch so configs can validate budgets cheaply).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEMES = ("uniform", "proportional", "temperature")


def resolve_splits(
    total: int, samples: int | None, epochs: int | None, splits: list[tuple[int, int]] | None
) -> list[tuple[int, int]]:
    """The (samples per epoch, epochs) pairs that spend exactly the budget ``total``; give exactly one of the three.

    An inexact split would compare runs that saw different amounts of data, so anything that does not divide the budget
    is an error rather than rounded.
    """
    options = (("samples", samples), ("epochs", epochs), ("splits", splits))
    given = [name for name, value in options if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of samples, epochs, splits; got {given or 'none'}")
    if total < 1:
        raise ValueError(f"budget must be at least 1, got {total}")
    if splits is not None:
        if not splits:
            raise ValueError("splits is empty")
        pairs = [(int(n), int(e)) for n, e in splits]
        for n, e in pairs:
            if n < 1 or e < 1:
                raise ValueError(f"split ({n}, {e}): samples and epochs must be at least 1")
            if n * e != total:
                raise ValueError(f"split ({n}, {e}): {n} x {e} = {n * e} is not the budget {total}")
        return pairs
    name, value = ("samples", samples) if samples is not None else ("epochs", epochs)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if total % value:
        raise ValueError(f"budget {total} is not divisible by {name} {value}")
    other = total // value
    return [(value, other)] if name == "samples" else [(other, value)]


def task_counts(n: int, pool_sizes: Sequence[int], scheme: str = "uniform", temperature: float = 1.0) -> np.ndarray:
    """Integer samples per task for one epoch of ``n`` samples, summing exactly to ``n``.

    Weights: ``uniform`` 1 per task, ``proportional`` the pool size, ``temperature`` pool_size ** (1 / temperature) (the
    multilingual-sampling rule: 1 is proportional, large temperatures approach uniform, so small tasks are not
    drowned out). Shares are rounded by the largest-remainder method, ties to the lower task index.
    """
    sizes = np.asarray(pool_sizes, dtype=np.float64)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("pool_sizes must be a non-empty list of sizes")
    if (sizes < 0).any():
        raise ValueError(f"pool sizes must be non-negative, got {list(pool_sizes)}")
    if scheme == "uniform":
        weights = np.ones_like(sizes)
    elif scheme == "proportional":
        weights = sizes
    elif scheme == "temperature":
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        weights = sizes ** (1.0 / temperature)
    else:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if weights.sum() <= 0:
        raise ValueError(f"scheme {scheme!r} gives every task zero weight for pool sizes {list(pool_sizes)}")
    quotas = n * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainder = n - int(counts.sum())
    order = np.argsort(-(quotas - counts), kind="stable")  # largest fraction first, lower index on ties
    counts[order[:remainder]] += 1
    return counts
