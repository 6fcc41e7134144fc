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
    """The search's name: its folder under `<workdir>/search/`."""
    targets: list[str] = Field(default_factory=list)
    """Targets the recipe is searched for (default: the first transfer task)."""
    size: int | None = Field(default=None, gt=1)
    """Training molecules per target (default: the largest transfer size)."""
    fold: int = Field(default=0, ge=0)
    """The fold the trials train on."""
    subset_size: tuple[int, int] = (1, 3)
    """[min, max] tasks in a pretraining subset."""
    seed_from_selection: bool = True
    """Start with the similarity-selected subset and its one-swap neighbours."""
    max_neighbours: int = Field(default=4, ge=0)
    """How many one-swap neighbours of the selected subset seed the search."""
    splits: list[tuple[int, int]] | None = None
    """(samples, epochs) options for the budget (default: the budget's own)."""
    samples_range: tuple[int, int] | None = None
    """Or: up to 6 log-spaced samples-per-epoch values in this range that divide the budget."""
    sampling: list[Literal["uniform", "proportional", "temperature"]] = Field(default_factory=lambda: ["uniform"])
    """Task sampling schemes to try."""
    strategies: list[Literal["full", "head", "last"]] = Field(default_factory=lambda: ["full", "last"])
    """Fine-tuning strategies to try."""
    lr: tuple[float, float] = (1e-4, 1e-2)
    """[low, high] of the log-uniform learning rate."""
    regularizers: list[Literal["none", "l2sp", "bss"]] = Field(default_factory=lambda: ["none", "l2sp"])
    """Regularisers to try."""
    reg_weight: tuple[float, float] = (1e-4, 1e-1)
    """[low, high] of the log-uniform regulariser weight."""
    batch_sizes: list[int] = Field(default_factory=lambda: [50])
    """Batch sizes to try."""
    num_trials: int = Field(default=16, ge=1)
    """Trials to run."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop the whole search after this many seconds (Ray Tune's time budget; null: no limit)."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """`asha` stops weak trials early; `fifo` runs every trial to the end."""
    grace_period: int = Field(default=2, ge=1)
    """ASHA: epochs before a trial can be stopped."""
    reduction_factor: int = Field(default=3, ge=2)
    """ASHA: keep the best 1/this of trials at each rung."""
    max_concurrent: int | None = Field(default=None, ge=1)
    """Trials running at once (null: as many as resources allow)."""
    cpus_per_trial: float = Field(default=1.0, gt=0)
    """CPUs each trial asks Ray for."""
    gpus_per_trial: float = Field(default=0.0, ge=0)
    """GPUs (fractions allowed) each trial asks Ray for."""

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


