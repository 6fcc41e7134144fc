"""Task-similarity metrics behind one registry (``tasksim_ray.registry.METRICS``).

Every metric is a function ``(SimilarityInputs, **options) -> T x T matrix``. A new metric is one
module and one line in ``METRICS`` (or ``METRICS.register(name, MetricSpec(...))`` from user code);
its ``kind`` and ``needs`` live in the table, so config validation reads them without loading it.
"""

from __future__ import annotations

from tasksim_ray.registry import METRICS, MetricSpec
from tasksim_ray.similarity.inputs import SimilarityInputs

__all__ = ["METRICS", "MetricSpec", "SimilarityInputs"]
