"""Task similarity from probe embeddings.

RSA: each task's representational dissimilarity matrix is RDM_k = 1 - Pearson(probe_i, probe_j)
over its model's probe embeddings; RSA(a, b) is the Spearman correlation of the upper triangles
of RDM_a and RDM_b. Each RDM is ranked once, and all pairs follow from one matrix product of the
standardised rank vectors (Spearman = Pearson of ranks), instead of re-ranking per pair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from tasksim_ray.errors import TasksimError


def check_embeddings(embs: dict[str, np.ndarray]) -> int:
    """Validate per-task embeddings of one shared probe set; returns the number of probes."""
    sizes = {t: e.shape[0] for t, e in embs.items()}
    if len(set(sizes.values())) > 1:
        raise TasksimError(f"tasks embed different probe sets: probe counts {sizes}")
    n = next(iter(sizes.values()), 0)
    if n < 3:
        raise TasksimError(f"need at least 3 probes for an RDM, got {n}")
    for task, e in embs.items():
        bad = int((~np.isfinite(e)).any(axis=1).sum())
        if bad:
            raise TasksimError(f"task '{task}': {bad} probe embedding row(s) are not finite")
        flat = int((np.ptp(e, axis=1) == 0).sum())
        if flat:
            raise TasksimError(f"task '{task}': {flat} probe embedding row(s) are constant "
                               "(zero variance), so their Pearson RDM entries are undefined")
    return n


def rdm(emb: np.ndarray) -> np.ndarray:
    """1 - Pearson correlation between every pair of probe embeddings (rows)."""
    return 1.0 - np.corrcoef(emb)


def upper_triangle(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], k=1)]


def standardized_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share a rank, as Spearman requires), centred and scaled to unit norm."""
    r = rankdata(values)
    r -= r.mean()
    norm = np.linalg.norm(r)
    return r / norm if norm > 0 else r


def rsa_matrix(embs: dict[str, np.ndarray]) -> np.ndarray:
    check_embeddings(embs)
    ranks = np.stack([standardized_ranks(upper_triangle(rdm(e))) for e in embs.values()])
    sim = ranks @ ranks.T
    np.fill_diagonal(sim, 1.0)
    return np.clip((sim + sim.T) / 2, -1.0, 1.0)


METRICS: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {"rsa": rsa_matrix}


def similarity_matrix(metric: str, embs: dict[str, np.ndarray]) -> np.ndarray:
    return METRICS[metric](embs)
