"""Central moment discrepancy (Zellinger et al., 2017) between two tasks' feature distributions.

Features are first squashed to [0, 1] with a sigmoid, so the interval width b - a is 1 and the
paper's per-order weights 1 / |b - a|^k all equal 1. For K = ``order``:

    CMD_K(X, Y) = |E[X] - E[Y]|_2 + sum_{k=2..K} |c_k(X) - c_k(Y)|_2,

where c_k is the vector of per-feature k-th central moments E[(x - E[x])^k] (sample moments).
CMD compares marginal feature distributions, so both sets must share the same features:

- ``on="embeddings"`` (default): task models' embeddings of the shared probe set; only defined
  when every task model has the same embedding width d_k.
- ``on="dataset_features"``: each task's own inputs embedded by one shared model (as CSI uses).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.spatial.distance import pdist, squareform
from scipy.special import expit

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.frechet import feature_sets
from tasksim_ray.similarity.inputs import SimilarityInputs


def moment_stack(x: np.ndarray, order: int) -> np.ndarray:
    """(order, d): the mean, then central moments 2..order of the sigmoid-squashed features."""
    s = expit(np.asarray(x, dtype=np.float64))
    mean = s.mean(axis=0)
    centred = s - mean
    return np.stack([mean] + [np.mean(centred ** k, axis=0) for k in range(2, order + 1)])


def cmd_matrix(inputs: SimilarityInputs, *, order: int = 5,
               on: Literal["embeddings", "dataset_features"] = "embeddings") -> np.ndarray:
    """T x T CMD distances (symmetric, zero diagonal) between the tasks' feature sets, in dict order."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise TasksimError(f"CMD order must be an integer >= 1, got {order!r}")
    if on == "embeddings" and inputs.embeddings:
        dims = {t: e.shape[-1] for t, e in inputs.embeddings.items()}
        if len(set(dims.values())) > 1:
            raise TasksimError(f"CMD needs every task model's embedding to have the same width, got dims {dims}; "
                               "use on='dataset_features' or a metric such as CKA")
    sets = feature_sets(inputs, on, min_rows=2)
    moments = np.stack([moment_stack(x, order) for x in sets.values()])  # (T, order, d)
    return sum(squareform(pdist(moments[:, k])) for k in range(order))
