"""What every similarity metric receives, and the checks that keep NaN matrices out of reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasksim_ray.errors import TasksimError


@dataclass
class SimilarityInputs:
    """Per-task data for one study, keyed by task name (same order everywhere).

    ``embeddings``: task model k's embeddings of the shared probe set, (M, d_k), rows aligned.
    ``labels``: task k's labels of the probe molecules, (M,), NaN where unknown (LogME).
    ``dataset_features``: task k's *own* inputs embedded by one shared model, (N_k, d), rows
    need not align across tasks (CSI and other dataset-distribution metrics).
    ``node_features``: the same inputs' per-atom features, (atoms_k, d), with ``node_groups[k]`` the
    structure each atom row belongs to (node-level CSI samples a few atoms per structure).
    ``seed`` seeds any sampling a metric does; ``cache``, when the pipeline gives one, lets a metric
    keep per-task work between runs.
    """

    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    dataset_features: dict[str, np.ndarray] = field(default_factory=dict)
    node_features: dict[str, np.ndarray] = field(default_factory=dict)
    node_groups: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int = 0
    cache: MetricCache | None = None

    @property
    def names(self) -> list[str]:
        return list(self.embeddings or self.dataset_features)


@dataclass(frozen=True)
class MetricCache:
    """Where a metric may cache per-task work: a folder, each task's cache key (its embedding's key,
    so a new model or probe set is new work) and a progress callback ``(key, was_cached)``."""

    root: Path
    keys: dict[str, str]
    on_done: Callable[[str, bool], None] | None = None


def check_finite(arrays: dict[str, np.ndarray], what: str) -> None:
    for task, e in arrays.items():
        bad = int((~np.isfinite(e)).any(axis=1).sum()) if e.ndim == 2 else int((~np.isfinite(e)).sum())
        if bad:
            raise TasksimError(f"task '{task}': {bad} {what} row(s) are not finite")


def check_embeddings(embs: dict[str, np.ndarray], min_probes: int = 3) -> int:
    """Validate per-task embeddings of one shared probe set; returns the number of probes."""
    if not embs:
        raise TasksimError("no task embeddings to compare")
    sizes = {t: e.shape[0] for t, e in embs.items()}
    if len(set(sizes.values())) > 1:
        raise TasksimError(f"tasks embed different probe sets: probe counts {sizes}")
    n = next(iter(sizes.values()))
    if n < min_probes:
        raise TasksimError(f"need at least {min_probes} probes, got {n}")
    check_finite(embs, "probe embedding")
    for task, e in embs.items():
        if np.all(np.ptp(e, axis=0) == 0):
            raise TasksimError(f"task '{task}': the embedding is constant over all probes (zero variance)")
    return n
