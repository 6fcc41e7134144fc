"""What every transfer study shares: the :class:`Study` plug-in interface, the context studies plan
in, learning-curve helpers, and :func:`run_studies`, which runs every study's cells on Ray at once.

A study is one module of ``tasksim_ray.transfer.studies`` (one :class:`Study` subclass) and one
line in ``tasksim_ray.registry.STUDIES``. It turns into cells (and pretraining runs the cells wait
on): :func:`run_studies` submits every study's cells together, so pretraining and fine-tuning
overlap and a cell two studies share runs once; then each study summarises its cells and renders
its section of the transfer report.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import ray

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import read_manifest
from tasksim_ray.infra.progress import task_progress
from tasksim_ray.stages import Run
from tasksim_ray.training.multitask import submit_subsets
from tasksim_ray.transfer.analysis import auc, fold_gains, mean_se, summarise_curve
from tasksim_ray.transfer.cells import CellData, CellSettings, Recipe, cell_key, run_cells
from tasksim_ray.transfer.data import SplitData, TransferData
from tasksim_ray.transfer.recommend import FoldGains, recommend_report

if TYPE_CHECKING:
    from tasksim_ray.config import PipelineConfig
    from tasksim_ray.infra.progress import Console

SCRATCH = Recipe("scratch", "scratch")
Job = tuple[CellData, Recipe]
Curves = dict[tuple[str, str], dict[str, Any]]  # (target, recipe label) -> summary, per-fold AUCs, cells


@dataclass(frozen=True)
class SimilarityView:
    """The pipeline's similarity results the studies use: every metric's matrix over ``names``,
    how to read it (similarity, distance, score), and the selected diverse subset."""

    names: list[str]
    matrices: dict[str, np.ndarray]
    kinds: dict[str, str]
    selection_metric: str
    subset: list[str]
    seconds: float = float("nan")  # what computing them took (embedding + metrics), cached or not

    def row(self, target: str, sources: list[str], metric: str | None = None) -> tuple[float, ...]:
        """``metric`` (default: the selection metric) from ``target`` to each source, higher = closer."""
        metric = metric or self.selection_metric
        m = np.asarray(self.matrices[metric])
        sign = -1.0 if self.kinds[metric] == "distance" else 1.0
        return tuple(float(sign * m[self.names.index(target), self.names.index(s)]) for s in sources)


@dataclass
class Context:
    """What every study needs: the run, its data, the per-task models and the similarity results."""

    run: Run
    data: TransferData | SplitData
    store_ref: ray.ObjectRef
    settings: CellSettings
    model_dirs: dict[str, str]
    similarity: SimilarityView | None = None  # only the studies that need it compute it
    pending: dict[str, ray.ObjectRef] = field(default_factory=dict)  # pretraining runs in flight

    def from_task(self, source: str) -> Recipe:
        return Recipe("finetune", source, (self.model_dirs[source],))

    def pretrain(self, jobs: list[tuple[list[str], tuple[int, int]]]) -> list[Path]:
        """Start the (subset, split) pretraining runs not cached; cells wait on them via ``pending``."""
        cfg = self.run.cfg
        dirs, pending = submit_subsets(self.store_ref, [(self.data.subset(t), split) for t, split in jobs], cfg.model,
                                       cfg.transfer.budget, cfg.seed, self.run.artifacts / "subset-models",
                                       cfg.transfer.num_cpus, cfg.transfer.num_gpus)
        self.pending |= pending
        return dirs


@dataclass
class Done:
    """The finished cells: each cell's result, and (grouped when first asked, so a study that runs
    no whole learning curves never needs them) the learning curves by (target, recipe label) with
    per-fold AUCs over ``sizes`` x ``folds``."""

    cells: list[dict[str, Any]]
    sizes: list[int]
    folds: int

    @cached_property
    def curves(self) -> Curves:
        return _curves([r for r in self.cells if r["size"] is not None], self.sizes, self.folds)


@dataclass
class Section:
    """A study's part of the transfer report: markdown lines and the figures it wrote, by name."""

    markdown: list[str]
    figures: dict[str, Path] = field(default_factory=dict)


class Study:
    """A transfer study. Subclass it, set the class attributes, implement :meth:`plan`,
    :meth:`summarise` and :meth:`render`, and register it: ``STUDIES.register(name, StudySpec(cls,
    verb, help))`` (with ``config=Model``, a pydantic model: its own section ``transfer.<name>``,
    validated and read as ``cfg.transfer.<name>``). An instance lives for one run: :meth:`plan` may keep on ``self`` what
    :meth:`summarise` needs (the pretraining folders it started, the recipes per target).

    ``data``: ``curves``, learning-curve cells (sizes x folds) of the pipeline's tasks, whose models
    (and, when :meth:`needs_similarity`, similarities) the pipeline computes; or ``splits``, the whole
    training split per split seed, in the context the study builds itself (:meth:`build_context`).
    A ``splits`` study runs alone."""

    data: ClassVar[Literal["curves", "splits"]] = "curves"

    def __init__(self, name: str, target: str | None = None, sources: list[str] | None = None) -> None:
        self.name = name  # its name in the registry: its key in the results and the report
        self.target, self.sources = target, sources  # the CLI's --target / --source, for studies that take them

    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return False

    def check(self, cfg: PipelineConfig) -> None:
        """Refuse a config this study cannot run, in one line (:class:`TasksimError`), before any work."""

    @classmethod
    def build_context(cls, cfg: PipelineConfig, console: Console) -> Context:
        """A ``splits`` study's own context (a ``curves`` study gets the pipeline's)."""
        raise NotImplementedError(f"{cls.__name__} plans on the pipeline's learning-curve context")

    def plan(self, ctx: Context) -> list[Job]:
        raise NotImplementedError

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        """The study's JSON-able result from its finished cells (``transfer/<studies>.json``)."""
        raise NotImplementedError

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        """Tables and figures of :meth:`summarise`'s result, written under ``out``."""
        raise NotImplementedError

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """The result in the form a paper's table is compared with (``tasksim_ray.papers.compare``:
        ``{task: {method: {mean, std, seeds}}}``, or ``{fact key: value}`` for a set of facts); None
        when the study has nothing to put beside a paper (``transfer.paper_tables`` then refuses it)."""
        return None


def curve_jobs(ctx: Context, target: str, recipes: list[Recipe]) -> list[Job]:
    tc = ctx.run.cfg.transfer
    return [(ctx.data.cell(target, f, n), r) for r in recipes for f in range(tc.folds) for n in tc.sizes]


def _curves(results: list[dict[str, Any]], sizes: list[int], folds: int) -> Curves:
    """Group cell results into per-(target, recipe) curves with per-fold AUCs."""
    grid: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.full((folds, len(sizes)), np.nan))
    extra: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        grid[(r["target"], r["recipe"])][r["fold"], sizes.index(r["size"])] = r["test_mae"]
        extra[(r["target"], r["recipe"])].append(r)
    return {k: {"summary": summarise_curve(sizes, m), "fold_auc": np.array([auc(sizes, row) for row in m]),
                "cells": extra[k]} for k, m in grid.items()}


def curve_entry(curves: Curves, target: str, label: str) -> dict[str, Any]:
    c = curves[(target, label)]
    entry = c["summary"].to_dict()
    if label != "scratch":
        g = fold_gains(curves[(target, "scratch")]["fold_auc"], c["fold_auc"])
        entry["gain_mean"], entry["gain_se"] = mean_se(g)
    return entry


def recommendation(ctx: Context, targets: list[str], per_fold: FoldGains) -> dict[str, Any]:
    """Every metric (and their leave-one-target-out combination with cheap pair features: source
    size, label correlation on the target's training inputs) judged as a source recommender."""
    sim = ctx.similarity
    assert sim is not None and isinstance(ctx.data, TransferData)
    scores = {m: {t: dict(zip(per_fold[t], sim.row(t, list(per_fold[t]), m))) for t in targets} for m in sim.matrices}
    sizes = {s: float(read_manifest(Path(ctx.model_dirs[s])).get("metrics", {}).get("n_train", np.nan))
             for s in {s for row in per_fold.values() for s in row}}
    corr = {t: {s: ctx.data.label_correlation(t, s) for s in per_fold[t]} for t in targets}
    pair = {"log10 source size": {t: {s: float(np.log10(sizes[s])) for s in per_fold[t]} for t in targets},
            "label r": corr, "|label r|": {t: {s: abs(v) for s, v in row.items()} for t, row in corr.items()}}
    rec = recommend_report(scores, per_fold, pair, sizes, ctx.run.cfg.seed)
    return rec | {"gain": "relative AUC improvement over scratch, % of scratch AUC, mean over folds"}


def run_studies(ctx: Context, studies: list[Study]) -> dict[str, Any]:
    """Run all studies' cells in one go (shared cells once) and summarise each study."""
    tc = ctx.run.cfg.transfer
    planned = [study.plan(ctx) for study in studies]
    # fold by fold (stable otherwise): a study stopped early has whole folds, which a rerun with
    # fewer transfer.folds reuses
    jobs = sorted((j for p in planned for j in p), key=lambda j: j[0].fold)
    n_cells = len({cell_key(c, r, ctx.settings) for c, r in jobs})
    with ctx.run.timed("transfer") as timing, task_progress(ctx.run.console, "transfer", n_cells) as advance:
        results = run_cells(ctx.store_ref, jobs, ctx.settings, ctx.run.artifacts / "cells", tc.num_cpus, tc.num_gpus,
                            after=ctx.pending, on_done=advance)
        timing["cells"] = n_cells
    unique = list({(r["target"], r["recipe"], r["size"], r["fold"]): r for r in results}.values())
    done = Done(unique, tc.sizes, tc.folds)
    return {study.name: study.summarise(ctx, done) for study in studies}


def check_sources(ctx: Context, target: str, sources: list[str]) -> None:
    """``target`` is a transfer task, and ``sources`` are other tasks (or foundation models) with models."""
    if target not in ctx.data.targets:
        raise TasksimError(f"--target '{target}' is not a transfer task; tasks: {ctx.data.targets}")
    if target in sources:
        raise TasksimError(f"target '{target}' cannot be in its own pretraining data")
    unknown = [s for s in sources if s not in ctx.model_dirs]
    if unknown:
        raise TasksimError(f"unknown source task(s) {unknown}; tasks: {sorted(ctx.model_dirs)}")
