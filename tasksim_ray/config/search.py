"""Config of the Ray Tune + Optuna recipe search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasksim_ray.config.base import Strict as _Strict


class SearchConfig(_Strict):
    """Ray Tune + Optuna search over a recipe: pretraining subset, budget split, sampling scheme and
    fine-tuning settings, for ``targets`` trained on ``size`` molecules of fold ``fold``.

    Every trial pretrains (or reuses) a multi-task model under ``transfer.budget.total`` and
    fine-tunes each target, reporting the mean standardised validation MAE every epoch."""

    name: str = Field(default="search", pattern=r"^[A-Za-z0-9_.-]+$")
    targets: list[str] = Field(default_factory=list)  # default: the first transfer task
    size: int | None = Field(default=None, gt=1)  # default: the largest transfer size
    fold: int = Field(default=0, ge=0)
    subset_size: tuple[int, int] = (1, 3)
    seed_from_selection: bool = True  # first trials: the selected subset and its one-swap neighbours
    max_neighbours: int = Field(default=4, ge=0)
    splits: list[tuple[int, int]] | None = None  # (samples, epochs) options; default: the budget's
    samples_range: tuple[int, int] | None = None  # or: up to 6 log-spaced N in this range dividing the budget
    sampling: list[Literal["uniform", "proportional", "temperature"]] = Field(default_factory=lambda: ["uniform"])
    strategies: list[Literal["full", "head", "last"]] = Field(default_factory=lambda: ["full", "last"])
    lr: tuple[float, float] = (1e-4, 1e-2)
    regularizers: list[Literal["none", "l2sp", "bss"]] = Field(default_factory=lambda: ["none", "l2sp"])
    reg_weight: tuple[float, float] = (1e-4, 1e-1)
    batch_sizes: list[int] = Field(default_factory=lambda: [50])
    num_trials: int = Field(default=16, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    max_concurrent: int | None = Field(default=None, ge=1)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> SearchConfig:
        lo, hi = self.subset_size
        if not 1 <= lo <= hi:
            raise ValueError("search.subset_size must be [min, max] with 1 <= min <= max")
        for name in ("lr", "reg_weight"):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise ValueError(f"search.{name} must be [low, high] with 0 < low <= high")
        return self


