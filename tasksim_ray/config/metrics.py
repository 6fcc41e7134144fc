"""The options of the built-in similarity metrics (``similarity.options.<metric>``). Each model is
named by its metric's ``MetricSpec.options`` in ``tasksim_ray.registry.METRICS``; a metric from
user code registers its own model the same way."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasksim_ray.config.base import Strict


class RSAOptions(Strict):
    """RDMs compared by Spearman (the published RSA), Pearson or Kendall's tau-b. Spearman and
    Pearson go through the out-of-core engine (cached per embedding) within ``memory_budget_gb``."""

    comparison: Literal["spearman", "pearson", "kendall"] = Field(
        "spearman", description="how two tasks' RDM upper triangles are compared")
    memory_budget_gb: float = Field(8.0, gt=0, description="memory the RSA engine may use for rank vectors")


class CMDOptions(Strict):
    """Central moment discrepancy up to ``order`` (the mean and central moments 2..order)."""

    order: int = Field(5, ge=1, description="highest central moment compared")


class CSIOptions(Strict):
    """CSI on node-level features: at most ``per_structure`` atoms are drawn per molecule or crystal,
    so large structures do not dominate a task's distribution (class-balanced sampling)."""

    per_structure: int = Field(8, ge=1, description="atoms drawn per structure at most")
