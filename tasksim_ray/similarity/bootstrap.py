"""Bootstrap confidence intervals for RSA, resampling probes (seeded).

Each replicate draws M probes with replacement and recomputes every task's RDM triangle on them,
leaving out pairs of a probe with its own copy (a zero dissimilarity that says nothing about the
model); all T tasks share the replicate's probes, so the pair correlations stay paired.
Replicates are split over Ray tasks. Large probe sets are first subsampled to ``max_probes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings
from tasksim_ray.similarity.rsa import Comparison, _row_standardise, comparison_vector, correlations_from_vectors


@dataclass(frozen=True)
class BootstrapCI:
    lower: np.ndarray
    upper: np.ndarray
    std: np.ndarray
    level: float
    n_boot: int
    n_probes: int


def _replicates(zs: list[np.ndarray], comparison: Comparison, seeds: list[int]) -> np.ndarray:
    m = zs[0].shape[0]
    iu = np.triu_indices(m, k=1)
    out = []
    for seed in seeds:
        idx = np.random.default_rng(seed).integers(0, m, size=m)
        keep = idx[iu[0]] != idx[iu[1]]
        rows, cols = iu[0][keep], iu[1][keep]
        vecs = []
        for z in zs:
            zb = z[idx]
            corr = zb @ zb.T
            vecs.append(comparison_vector(1.0 - corr[rows, cols], comparison))
        out.append(correlations_from_vectors(np.stack(vecs)))
    return np.stack(out)


def bootstrap_rsa(embs: dict[str, np.ndarray], comparison: Comparison = "spearman", n_boot: int = 200,
                  level: float = 0.95, seed: int = 0, max_probes: int = 1000, chunks: int | None = None) -> BootstrapCI:
    """Percentile CIs of every RSA pair; uses Ray when it is running, else runs in process."""
    if comparison == "kendall":
        raise TasksimError("bootstrap supports spearman and pearson RDM comparisons, not kendall")
    m = check_embeddings(embs)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(m, size=max_probes, replace=False)) if m > max_probes else np.arange(m)
    zs = [_row_standardise(e[sub], t) for t, e in embs.items()]
    seeds = rng.integers(0, 2**63 - 1, size=n_boot).tolist()
    if ray.is_initialized():
        n_chunks = chunks or max(1, int(ray.cluster_resources().get("CPU", 1)))
        zs_ref = ray.put(zs)
        remote = ray.remote(_replicates).options(num_cpus=1, name=f"bootstrap:{comparison}")
        parts = ray.get([remote.remote(zs_ref, comparison, list(s)) for s in np.array_split(seeds, n_chunks) if len(s)])
        sims = np.concatenate(parts)
    else:
        sims = _replicates(zs, comparison, seeds)
    alpha = (1 - level) / 2
    return BootstrapCI(np.quantile(sims, alpha, axis=0), np.quantile(sims, 1 - alpha, axis=0),
                       sims.std(axis=0, ddof=1), level, n_boot, len(sub))


def rsa_intervals(inputs: SimilarityInputs, comparison: Comparison = "spearman", *, n_boot: int, level: float,
                  seed: int, max_probes: int, **_: object) -> BootstrapCI | None:
    """RSA's intervals over probe resamples (the metric's ``intervals``); none for Kendall's tau."""
    if comparison == "kendall" or n_boot == 0:
        return None
    return bootstrap_rsa(inputs.embeddings, comparison, n_boot, level, seed, max_probes)
