"""The search space, define-by-run (Optuna), and how a trial's parameters become a recipe.

The pretraining subset is encoded as one weight in [0, 1] per candidate source task plus a size
k: the subset is the k tasks with the largest weights. This keeps every parameter's domain fixed
(Optuna's TPE needs that) while any subset within the size bounds stays reachable, and lets the
similarity-based selection and its one-swap neighbours be enqueued as the first trials (weight 1
for a chosen task, 0 otherwise). Conditional parameters: the regulariser's weight exists only
when a regulariser is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from tasksim_ray.config import BudgetConfig, FinetuneConfig, PipelineConfig, RegularizerConfig
from tasksim_ray.errors import TasksimError


@dataclass(frozen=True)
class SpaceSpec:
    """What the space needs to know: candidate sources (never a target), splits, settings."""

    sources: tuple[str, ...]
    splits: tuple[tuple[int, int], ...]
    cfg: PipelineConfig

    @classmethod
    def build(cls, cfg: PipelineConfig, kept: list[str], targets: list[str]) -> SpaceSpec:
        sources = tuple(t for t in kept if t not in targets)
        lo, hi = cfg.search.subset_size
        if len(sources) < lo:
            raise TasksimError(f"search.subset_size: at least {lo} source task(s) needed, but only {list(sources)} "
                               f"are not targets")
        if cfg.search.samples_range:
            splits = log_range_splits(cfg.transfer.budget.total, *cfg.search.samples_range)
        else:
            splits = tuple(tuple(s) for s in (cfg.search.splits or cfg.transfer.budget.resolved()))
        return cls(sources, splits, cfg)

    @property
    def size_bounds(self) -> tuple[int, int]:
        lo, hi = self.cfg.search.subset_size
        return lo, min(hi, len(self.sources))


def log_range_splits(total: int, lo: int, hi: int, count: int = 6) -> tuple[tuple[int, int], ...]:
    """Splits (N, total / N) for the divisors N of ``total`` in [lo, hi] nearest to ``count``
    log-spaced points, so 'samples from 1,000 to 60,000' becomes a handful of exact budgets."""
    divisors = [n for n in range(max(1, lo), min(hi, total) + 1) if total % n == 0]
    if not divisors:
        raise TasksimError(f"search.samples_range [{lo}, {hi}]: no number of samples in it divides the budget {total}")
    targets = np.geomspace(divisors[0], divisors[-1], num=min(count, len(divisors)))
    chosen = sorted({min(divisors, key=lambda n: abs(np.log(n) - np.log(t))) for t in targets})
    return tuple((n, total // n) for n in chosen)


def split_name(split: tuple[int, int]) -> str:
    return f"{split[0]}x{split[1]}"


def define_space(trial: optuna.Trial, spec: SpaceSpec) -> dict[str, Any]:
    """Suggest a recipe; returns the decoded subset as a constant so results tables show it."""
    sc = spec.cfg.search
    lo, hi = spec.size_bounds
    for task in spec.sources:
        trial.suggest_float(f"w_{task}", 0.0, 1.0)
    trial.suggest_int("subset_size", lo, hi)
    trial.suggest_categorical("split", [split_name(s) for s in spec.splits])
    trial.suggest_categorical("sampling", list(sc.sampling))
    trial.suggest_categorical("strategy", list(sc.strategies))
    trial.suggest_float("lr", *sc.lr, log=True)
    trial.suggest_categorical("batch_size", list(sc.batch_sizes))
    if trial.suggest_categorical("regularizer", list(sc.regularizers)) != "none":
        trial.suggest_float("reg_weight", *sc.reg_weight, log=True)
    return {"subset": decode_subset(dict(trial.params), spec)}


def decode_subset(params: dict[str, Any], spec: SpaceSpec) -> list[str]:
    """The ``subset_size`` tasks with the largest weights (ties: config order)."""
    order = sorted(spec.sources, key=lambda t: (-params[f"w_{t}"], spec.sources.index(t)))
    return sorted(order[:params["subset_size"]], key=spec.sources.index)


@dataclass(frozen=True)
class Recipe:
    """A trial's full recipe: what to pretrain on, under which budget split, and how to fine-tune."""

    subset: tuple[str, ...]
    split: tuple[int, int]
    budget: BudgetConfig
    finetune: FinetuneConfig


def decode(params: dict[str, Any], spec: SpaceSpec) -> Recipe:
    cfg = spec.cfg
    split = next(s for s in spec.splits if split_name(s) == params["split"])
    reg = params["regularizer"]
    finetune = cfg.transfer.finetune.model_copy(update={
        "strategy": params["strategy"], "lr": params["lr"], "batch_size": params["batch_size"],
        "regularizer": RegularizerConfig(kind=reg, weight=params.get("reg_weight", 0.0))})
    budget = cfg.transfer.budget.model_copy(update={"sampling": params["sampling"]})
    return Recipe(tuple(decode_subset(params, spec)), split, budget, finetune)


def seed_points(spec: SpaceSpec, selected: list[str]) -> list[dict[str, Any]]:
    """The similarity-selected subset and its one-swap neighbours (one task in or out), clipped to
    the size bounds, as complete first trials (other parameters at their defaults)."""
    lo, hi = spec.size_bounds
    base = [t for t in selected if t in spec.sources]
    subsets: list[list[str]] = []
    for cand in [base, *([t for t in base if t != out] for out in base),
                 *(base + [add] for add in spec.sources if add not in base)]:
        if lo <= len(cand) <= hi and sorted(cand) not in [sorted(s) for s in subsets]:
            subsets.append(cand)
    subsets = subsets[:1 + spec.cfg.search.max_neighbours]
    sc, ft = spec.cfg.search, spec.cfg.transfer.finetune
    defaults = {"split": split_name(spec.splits[0]), "sampling": sc.sampling[0],
                "strategy": ft.strategy if ft.strategy in sc.strategies else sc.strategies[0],
                "lr": min(max(ft.lr, sc.lr[0]), sc.lr[1]), "batch_size": sc.batch_sizes[0],
                "regularizer": sc.regularizers[0]}
    if defaults["regularizer"] != "none":
        defaults["reg_weight"] = sc.reg_weight[0]
    return [{**{f"w_{t}": float(t in s) for t in spec.sources}, "subset_size": len(s), **defaults}
            for s in subsets]
