"""Task-similarity metrics behind one registry.

Every metric is a function ``(SimilarityInputs, **options) -> T x T matrix``. A new metric is one
module and one line in ``METRICS``; ``kind`` says how to read it (similarity: higher is closer;
distance: lower is closer; score: row s transfers to column t, not symmetric) and ``needs`` which
inputs it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tasksim_ray.similarity.cka import cka_matrix
from tasksim_ray.similarity.cmd import cmd_matrix
from tasksim_ray.similarity.frechet import frechet_matrix
from tasksim_ray.similarity.inputs import SimilarityInputs
from tasksim_ray.similarity.logme import logme_matrix
from tasksim_ray.similarity.rsa import rsa_matrix


@dataclass(frozen=True)
class MetricSpec:
    fn: Callable[..., np.ndarray]
    kind: Literal["similarity", "distance", "score"]
    needs: Literal["embeddings", "dataset_features", "labels"]
    title: str


METRICS: dict[str, MetricSpec] = {
    "rsa": MetricSpec(rsa_matrix, "similarity", "embeddings", "RSA (Spearman of RDMs)"),
    "cka": MetricSpec(cka_matrix, "similarity", "embeddings", "linear CKA"),
    "cmd": MetricSpec(cmd_matrix, "distance", "embeddings", "central moment discrepancy"),
    "csi": MetricSpec(frechet_matrix, "distance", "dataset_features", "CSI (Frechet distance of datasets)"),
    "logme": MetricSpec(logme_matrix, "score", "labels", "LogME (row model -> column labels)"),
}

__all__ = ["METRICS", "MetricSpec", "SimilarityInputs"]
