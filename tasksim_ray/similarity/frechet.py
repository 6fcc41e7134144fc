"""CSI: the Fréchet distance between two tasks' input distributions, as FID does for images.

Each task's own inputs, embedded by one shared model (``dataset_features``), are summarised by
a Gaussian with mean mu and covariance S (ddof=1). Two tasks are compared with the Fréchet
(2-Wasserstein) distance between those Gaussians:

    d(a, b) = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

Tr((S_a S_b)^(1/2)) equals the sum of the square roots of the eigenvalues of the symmetric PSD
matrix S_a^(1/2) S_b S_a^(1/2), so it is computed with ``eigh`` only (eigenvalues clipped at 0,
tiny ones zeroed): no complex ``sqrtm`` and no imaginary residue to discard.

Balanced sampling keeps a task with many rows, or a structure with many atoms, from dominating:
``sample_per_task`` caps the rows per task, and with ``groups`` (node-level features: rows are
atoms, ``groups[task][i]`` the molecule/crystal id of row i) at most ``per_group`` atoms are drawn
per structure. Draws are seeded per (seed, task name), so a task's sample does not depend on
which other tasks are in the study.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings, check_finite

Rows = Literal["embeddings", "dataset_features", "node_features"]


def feature_sets(inputs: SimilarityInputs, on: Rows, min_rows: int) -> dict[str, np.ndarray]:
    """The per-task row sets a distribution metric compares, validated (finite, same width)."""
    if on == "embeddings":
        check_embeddings(inputs.embeddings, min_probes=min_rows)
        sets = inputs.embeddings
    elif on in ("dataset_features", "node_features"):
        sets = getattr(inputs, on)
        if not sets:
            raise TasksimError(f"no task {on.replace('_', ' ')} to compare")
    else:
        raise TasksimError(f"on must be 'embeddings', 'dataset_features' or 'node_features', got {on!r}")
    for task, x in sets.items():
        if x.ndim != 2 or x.shape[1] < 1:
            raise TasksimError(f"task '{task}': {on} must be a 2-D (rows, dims>=1) array, got shape {x.shape}")
        if x.shape[0] < min_rows:
            raise TasksimError(f"task '{task}': need at least {min_rows} {on} rows, got {x.shape[0]}")
    dims = {t: x.shape[1] for t, x in sets.items()}
    if len(set(dims.values())) > 1:
        raise TasksimError(f"{on} have different dimensions across tasks: {dims}")
    check_finite(sets, on.replace("_", " "))
    return sets


def balanced_rows(n: int, rng: np.random.Generator, sample_per_task: int | None = None,
                  groups: np.ndarray | None = None, per_group: int = 1) -> np.ndarray:
    """Sorted row indices: at most ``per_group`` per group id (if groups), then at most ``sample_per_task``."""
    rows = np.arange(n)
    if groups is not None:
        perm = rng.permutation(n)
        order = perm[np.argsort(groups[perm], kind="stable")]  # grouped, random order within a group
        g = groups[order]
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        rows = np.sort(order[rank < per_group])
    if sample_per_task is not None and rows.size > sample_per_task:
        rows = np.sort(rng.choice(rows, sample_per_task, replace=False))
    return rows


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, covariance (ddof=1) and the symmetric PSD square root of the covariance."""
    x = np.asarray(x, dtype=np.float64)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    w, v = np.linalg.eigh(cov)
    return x.mean(axis=0), cov, (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero negative and round-off-sized eigenvalues of a PSD matrix."""
    tol = max(float(w.max(initial=0.0)), 0.0) * w.size * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _distance(mu_a: np.ndarray, cov_a: np.ndarray, root_a: np.ndarray,
              mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    inner = root_a @ cov_b @ root_a
    cross = np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(d, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to row sets ``a`` (n_a, d) and ``b`` (n_b, d)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 1:
        raise TasksimError(f"Fréchet distance needs two (rows, d) arrays of equal d>=1, got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise TasksimError(f"Fréchet distance needs at least 2 rows per set, got {a.shape[0]} and {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TasksimError("Fréchet distance: the row sets contain non-finite values")
    mu_a, cov_a, root_a = _moments(a)
    mu_b, cov_b, _ = _moments(b)
    return _distance(mu_a, cov_a, root_a, mu_b, cov_b)


def csi_matrix(inputs: SimilarityInputs, *, per_structure: int = 8) -> np.ndarray:
    """CSI as published: Fréchet distances between the tasks' node-level features, at most
    ``per_structure`` atoms drawn per structure."""
    return frechet_matrix(inputs, on="node_features", groups=inputs.node_groups, per_group=per_structure)


def frechet_matrix(inputs: SimilarityInputs, *, on: Rows = "dataset_features", sample_per_task: int | None = None,
                   seed: int | None = None, groups: dict[str, np.ndarray] | None = None,
                   per_group: int = 1) -> np.ndarray:
    """T x T Fréchet distances (symmetric, zero diagonal) between the tasks' row sets, in dict order
    (``seed``: the inputs' seed unless given)."""
    seed = inputs.seed if seed is None else seed
    sets = feature_sets(inputs, on, min_rows=2)
    if sample_per_task is not None and sample_per_task < 2:
        raise TasksimError(f"sample_per_task must be at least 2, got {sample_per_task}")
    if per_group < 1:
        raise TasksimError(f"per_group must be at least 1, got {per_group}")
    stats = []
    for task, x in sets.items():
        g = None
        if groups is not None:
            if task not in groups:
                raise TasksimError(f"task '{task}': no groups given (groups must cover every task)")
            g = np.asarray(groups[task])
            if g.shape != (x.shape[0],):
                raise TasksimError(f"task '{task}': groups has shape {g.shape}, expected ({x.shape[0]},)")
        rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
        rows = balanced_rows(x.shape[0], rng, sample_per_task, g, per_group)
        if rows.size < 2:
            raise TasksimError(f"task '{task}': balanced sampling left {rows.size} row(s), need at least 2")
        stats.append(_moments(x[rows]))
    t = len(stats)
    dist = np.zeros((t, t))
    for i in range(t):
        for j in range(i + 1, t):
            dist[i, j] = dist[j, i] = _distance(*stats[i], *stats[j][:2])
    return dist
