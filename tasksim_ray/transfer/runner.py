"""Entry point of the transfer experiments: the studies named (from ``tasksim_ray.registry.STUDIES``)
are checked, planned in one context (the pipeline's, or a ``splits`` study's own), run on Ray
together, and written as one transfer report."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import ray

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import publish_dir
from tasksim_ray.infra.html import write_html_report
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.provenance import record_run
from tasksim_ray.registry import STUDIES
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_preprocess, stage_tasks
from tasksim_ray.stages.pipeline import run_pipeline
from tasksim_ray.training.multitask import SubsetModel, subset_model
from tasksim_ray.transfer.cells import CellSettings, Recipe, run_cells
from tasksim_ray.transfer.data import TransferData, report_transfer_sizes, stage_transfer_data
from tasksim_ray.transfer.report import write_transfer_report
from tasksim_ray.transfer.studies.foundation import foundation_dirs
from tasksim_ray.transfer.study import SCRATCH, Context, SimilarityView, Study, check_sources, run_studies


def build_context(cfg: PipelineConfig, console: Console, need_similarity: bool) -> Context:
    """Per-task models (and similarity, when asked) from the pipeline, then the transfer data."""
    if cfg.published.path:
        raise TasksimError("published.path: transfer studies need the pipeline's own tasks and data; "
                           "published checkpoints have none")
    run = Run(cfg, console)
    tasks = stage_tasks(run)  # cached and cheap: every study's sizes are checked before any model trains
    report_transfer_sizes(run, tasks, stage_preprocess(run, tasks))
    res = run_pipeline(cfg, console, until="report" if need_similarity else "pretrain")
    assert res.tasks_stage is not None and res.preprocess_stage is not None  # not a published run
    stage = stage_transfer_data(run, res.tasks_stage, res.preprocess_stage)
    data = TransferData.load(stage, res.tasks_stage)
    model_dirs = {t: str(d) for t, d in res.model_dirs.items()} | foundation_dirs(run, data.table)
    similarity = None
    if need_similarity:
        assert res.selection is not None  # the run went up to the report
        similarity = SimilarityView(res.tasks, res.matrices, res.kinds, res.metric, res.selection.subset,
                                    res.similarity_seconds)
    settings = CellSettings(cfg.model, cfg.transfer.finetune, cfg.transfer.moe, cfg.seed)
    return Context(run, data, ray.put(data.store()), settings, model_dirs, similarity)


def make_studies(cfg: PipelineConfig, names: list[str], target: str | None = None,
                 sources: list[str] | None = None) -> list[Study]:
    """The named studies, each checked against the config before any work."""
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise TasksimError(STUDIES.unknown(unknown[0]))
    studies: list[Study] = [STUDIES.get(n).cls(n, target, sources) for n in names]
    alone = [s.name for s in studies if s.data == "splits"]
    if alone and len(studies) > 1:
        raise TasksimError(f"the {alone[0]} study runs alone (it uses its own splits), not with {names}")
    for study in studies:
        study.check(cfg)
    for ref in cfg.transfer.paper_tables:
        named = ref.study or studies[0].name
        study = next((s for s in studies if s.name == named), None)
        if study is None or type(study).paper_rows is Study.paper_rows:
            raise TasksimError(f"transfer.paper_tables {ref.table}: the study '{named}' "
                               f"{'does not run' if study is None else 'has no rows to compare with a paper'}")
    return studies


def run_transfer(cfg: PipelineConfig, studies: list[str], console: Console | None = None,
                 target: str | None = None, sources: list[str] | None = None) -> dict[str, Any]:
    """Run ``studies`` (names in ``STUDIES``) and write ``<workdir>/report/transfer/``."""
    console, started = console or Console(), datetime.now(timezone.utc)
    chosen = make_studies(cfg, studies, target, sources)
    if chosen[0].data == "splits":
        ctx = chosen[0].build_context(cfg, console)
    else:
        ctx = build_context(cfg, console, any(s.needs_similarity(cfg) for s in chosen))
    results = run_studies(ctx, chosen)
    out = cfg.workdir_path / "report" / "transfer"
    run = record_run(out, cfg.model_dump(mode="json"), started, [s.name for s in chosen])
    paths = write_transfer_report(out, results, ctx, chosen, run)
    paths["html"] = write_html_report(out.parent)  # the run's page: the pipeline's report and this one
    publish_dir(out.parent)
    return {"studies": results, "paths": {k: str(v) for k, v in paths.items()}, "timings": ctx.run.timings}


def _check_names(cfg: PipelineConfig, console: Console, names: list[str], flag: str) -> None:
    """Task names given on the command line, checked against the kept tasks before any model trains
    (the tasks and preprocess stages are cheap and cached)."""
    run = Run(cfg, console)
    kept = stage_preprocess(run, stage_tasks(run)).manifest["kept"]
    unknown = [n for n in names if n not in kept and n not in cfg.transfer.foundation]
    if unknown:
        raise TasksimError(f"{flag}: unknown task(s) {unknown}; tasks: {kept}")


def pretrain_subset_models(cfg: PipelineConfig, tasks: list[str], console: Console | None = None) -> list[SubsetModel]:
    """Multi-task pretraining of ``tasks`` under the config's budget, one model per budget split."""
    _check_names(cfg, console or Console(), tasks, "--subset")
    ctx = build_context(cfg, console or Console(), need_similarity=False)
    dirs = ctx.pretrain([(tasks, s) for s in cfg.transfer.budget.resolved()])
    ray.get(list(ctx.pending.values()))
    return [subset_model(d) for d in dirs]


def finetune_once(cfg: PipelineConfig, target: str, sources: list[str], size: int | None, fold: int,
                  console: Console | None = None, subset: bool = False) -> dict[str, Any]:
    """One cell: fine-tune ``target`` from one task's model (or, with ``subset``, from ``sources``
    pretrained together under the budget) at one training size and fold, next to scratch."""
    if fold >= cfg.transfer.folds:
        raise TasksimError(f"--fold {fold}: the config has transfer.folds = {cfg.transfer.folds}")
    size = size or cfg.transfer.sizes[-1]
    if size > cfg.transfer.sizes[-1]:
        raise TasksimError(f"--size {size} exceeds the largest transfer size {cfg.transfer.sizes[-1]}")
    _check_names(cfg, console or Console(), [target, *sources], "--target/--source")
    ctx = build_context(cfg, console or Console(), need_similarity=False)
    check_sources(ctx, target, sources)
    if not subset:
        recipe = ctx.from_task(sources[0])
    else:
        split = cfg.transfer.budget.resolved()[0]
        [directory] = ctx.pretrain([(sources, split)])
        recipe = Recipe("finetune", f"subset {'+'.join(sources)} {split[0]}x{split[1]}", (str(directory),))
    cell = ctx.data.cell(target, fold, size)
    tc = cfg.transfer
    scratch, tuned = run_cells(ctx.store_ref, [(cell, SCRATCH), (cell, recipe)], ctx.settings,
                               ctx.run.artifacts / "cells", tc.num_cpus, tc.num_gpus, after=ctx.pending)
    return {"target": target, "units": ctx.data.units(target), "size": size, "fold": fold,
            "scratch": scratch, "finetuned": tuned}
