"""Entry point of the transfer experiments: build the context from the (cached) pipeline, plan
the requested studies, run their cells on Ray and write the transfer report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
import torch

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import publish_dir
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_preprocess, stage_tasks
from tasksim_ray.stages.pipeline import run_pipeline
from tasksim_ray.training.multitask import SubsetModel, subset_model
from tasksim_ray.transfer.cells import CellSettings, Recipe, run_cells
from tasksim_ray.transfer.data import (
    SplitData,
    TransferData,
    expert_features,
    stage_split_data,
    stage_transfer_data,
)
from tasksim_ray.transfer.budget_study import plan_budget
from tasksim_ray.transfer.foundation import foundation_context, foundation_dirs, plan_foundation
from tasksim_ray.transfer.ptft_study import plan_ptft
from tasksim_ray.transfer.report import write_transfer_report
from tasksim_ray.transfer.study import (
    SCRATCH,
    Context,
    Plan,
    SimilarityView,
    plan_curves,
    plan_matrix,
    plan_methods,
    plan_moe,
    plan_strategies,
    plan_subset,
    run_studies,
)

STUDIES = ("curves", "matrix", "subset", "moe", "strategies", "methods", "budget", "ptft")


def build_context(cfg: PipelineConfig, console: Console, need_similarity: bool) -> Context:
    """Per-task models (and similarity, when asked) from the pipeline, then the transfer data."""
    if cfg.published.path:
        raise TasksimError("published.path: transfer studies need the pipeline's own tasks and data; "
                           "published checkpoints have none")
    res = run_pipeline(cfg, console, until="report" if need_similarity else "pretrain")
    assert res.tasks_stage is not None and res.preprocess_stage is not None  # not a published run
    run = Run(cfg, console)
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


def source_names(checkpoints: list[Path]) -> dict[Path, str]:
    """Published checkpoints' names as sources: file names without the extension and without the
    '_'-separated words every one of them starts or ends with (``singletask_``, ``_best_model``)."""
    words = [p.name.removesuffix(".pth.tar").split("_") for p in checkpoints]
    head = tail = 0
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[head] == words[0][head] for w in words):
        head += 1
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[-1 - tail] == words[0][-1 - tail] for w in words):
        tail += 1
    return {p: "_".join(w[head:len(w) - tail]) for p, w in zip(checkpoints, words)}


def _published_files(cfg: PipelineConfig) -> tuple[list[Path], Path | None]:
    """(the MoE's extractor files, the one fine-tuning starts from), checked before any work."""
    src = cfg.transfer.sources
    folder = Path(src.path or "")
    names = src.names or sorted(p.name for p in folder.glob("*.pth.tar"))
    tl = folder / src.finetune_from if src.finetune_from else None
    if "finetune" in cfg.transfer.methods and tl is None:
        raise TasksimError("transfer.sources.finetune_from: name the checkpoint the finetune method starts from")
    missing = [str(p) for p in [folder / n for n in names] + ([tl] if tl else []) if not p.is_file()]
    if missing or not names:
        raise TasksimError(f"transfer.sources: checkpoint file(s) not found: {missing or [str(folder / '*.pth.tar')]}")
    return [folder / n for n in names], tl


def methods_context(cfg: PipelineConfig, console: Console) -> tuple[Context, dict[str, Recipe]]:
    """The methods study without a pipeline: split rows, graphs, each published extractor's frozen
    features per task (cached stages), all in one store; a recipe per method."""
    if cfg.transfer.sources.kind != "published":
        raise TasksimError("the methods study needs transfer.sources.kind 'published' or transfer.foundation "
                           "models (per-task models: use moe)")
    experts, tl = _published_files(cfg)
    run = Run(cfg, console)
    tasks = stage_tasks(run)
    ensure_ray(cfg.ray)  # the model hosts compute the extractor features
    stage = stage_split_data(run, tasks)
    data = SplitData.load(stage, tasks, cfg.transfer.standardize)
    store = data.store()
    each = "sources" in cfg.transfer.methods
    wanted = (experts if "moe" in cfg.transfer.methods or each else []) + (
        [tl] if tl and "finetune" in cfg.transfer.methods else [])
    strategy = cfg.transfer.finetune.strategy
    n_atoms = int(store["atom_ptr"][-1])
    ap = store["atom_ptr"]
    extractors = [p.resolve() for p in dict.fromkeys(wanted)]
    trained_last = {p.resolve() for p in wanted if (p in experts and cfg.transfer.moe.train_last)
                    or (p == tl and strategy == "last") or (each and strategy == "last")}
    feat = {p: torch.zeros(len(data.store_rows), 0) for p in extractors}
    h_in = {p: torch.zeros(n_atoms, 0) for p in trained_last}
    for t in data.targets:
        pos = data.positions(t)
        rows = torch.cat([torch.arange(int(ap[i]), int(ap[i + 1])) for i in pos])
        for p, f in expert_features(run, stage, t, pos, extractors, trained_last).items():
            if not feat[p].shape[1]:
                feat[p] = torch.zeros(len(data.store_rows), f["pooled"].shape[1])
            feat[p][pos] = f["pooled"]
            if p in trained_last:
                if not h_in[p].shape[1]:
                    h_in[p] = torch.zeros(n_atoms, f["h_in"].shape[1])
                h_in[p][rows] = f["h_in"]
    run.release_hosts()  # the cells' Ray jobs get the CPUs
    for p in extractors:
        store[f"feat/{p.name}"] = feat[p]
        if p in trained_last:
            store[f"h_in/{p.name}"] = h_in[p]
    prints = lambda paths: tuple((p.name, p.stat().st_size) for p in paths)  # noqa: E731
    recipes = {"scratch": SCRATCH,
               "finetune": Recipe("finetune", "finetune", (str(tl.resolve()),) if tl else (), published=True,
                                  fingerprints=prints([tl]) if tl else ()),
               "moe": Recipe("moe", "moe", tuple(str(p.resolve()) for p in experts), published=True,
                             fingerprints=prints(experts))}
    if each:  # one fine-tuning recipe per source, labelled by the source's name
        recipes |= {f"from {name}": Recipe("finetune", f"from {name}", (str(p.resolve()),), published=True,
                                           fingerprints=prints([p])) for p, name in source_names(experts).items()}
    tc = cfg.transfer
    settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
    ctx = Context(run, data, ray.put(store), settings, {})
    return ctx, {m: r for m, r in recipes.items() if m in tc.methods or (each and m.startswith("from "))}


def run_transfer(cfg: PipelineConfig, studies: list[str], console: Console | None = None,
                 target: str | None = None, sources: list[str] | None = None) -> dict[str, Any]:
    """Run ``studies`` (any of STUDIES) and write ``<workdir>/report/transfer/``."""
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise TasksimError(f"unknown study {unknown}; studies: {list(STUDIES)}")
    if "methods" in studies:
        if studies != ["methods"]:
            raise TasksimError(f"the methods study runs alone (it uses its own splits), not with {studies}")
        if cfg.transfer.foundation:
            ctx, recipes = foundation_context(cfg, console or Console())
            return _finish(cfg, ctx, [plan_foundation(ctx, recipes)])
        ctx, recipes = methods_context(cfg, console or Console())
        return _finish(cfg, ctx, [plan_methods(ctx, recipes)])
    need_sim = bool({"matrix", "subset", "budget"} & set(studies)) or ("moe" in studies and cfg.transfer.moe.init == "similarity")
    ctx = build_context(cfg, console or Console(), need_sim)
    plans: list[Plan] = []
    for study in studies:
        if study == "curves":
            chosen = sources if sources else [s for s in ctx.data.targets if s != target] + cfg.transfer.foundation
            _check_sources(ctx, str(target), chosen)
            plans.append(plan_curves(ctx, str(target), chosen))
        elif study == "strategies":
            pairs = [(str(target), s) for s in sources or []] if target else cfg.transfer.strategy_pairs
            if not pairs:
                raise TasksimError("strategies: give --target and --source, or transfer.strategy_pairs in the config")
            for t, s in pairs:
                _check_sources(ctx, t, [s])
            plans.append(plan_strategies(ctx, pairs))
        else:
            plans.append({"matrix": plan_matrix, "subset": plan_subset, "moe": plan_moe, "budget": plan_budget,
                          "ptft": plan_ptft}[study](ctx))
    return _finish(cfg, ctx, plans)


def _finish(cfg: PipelineConfig, ctx: Context, plans: list[Plan]) -> dict[str, Any]:
    results = run_studies(ctx, plans)
    paths = write_transfer_report(cfg.workdir_path / "report" / "transfer", results, ctx)
    publish_dir(cfg.workdir_path / "report" / "transfer")
    return {"studies": results, "paths": {k: str(v) for k, v in paths.items()}, "timings": ctx.run.timings}


def _check_sources(ctx: Context, target: str, sources: list[str]) -> None:
    if target not in ctx.data.targets:
        raise TasksimError(f"--target '{target}' is not a transfer task; tasks: {ctx.data.targets}")
    if target in sources:
        raise TasksimError(f"target '{target}' cannot be in its own pretraining data")
    unknown = [s for s in sources if s not in ctx.model_dirs]
    if unknown:
        raise TasksimError(f"unknown source task(s) {unknown}; tasks: {sorted(ctx.model_dirs)}")


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
    _check_sources(ctx, target, sources)
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
