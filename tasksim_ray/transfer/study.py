"""The transfer studies, planned as cells and run together on Ray.

Each study turns into learning-curve cells (and, for the subset study, pretraining runs the cells
wait on); :func:`run_studies` submits everything at once so pretraining and fine-tuning overlap,
then each study summarises its cells:

- ``curves``: one target, scratch and a list of sources;
- ``matrix``: every target from every other single-task model: the gain matrix and how well each
  similarity metric predicts it;
- ``subset``: per target, pretrain on the selected diverse subset vs on all other tasks under the
  same budget, then fine-tune;
- ``moe``: per target, a mixture of the other tasks' frozen experts;
- ``strategies``: fine-tuning variants (strategy, unfreezing, regulariser) on chosen pairs;
- ``budget`` (``budget_study.py``): per target, every other task alone and all of them under one
  budget: the single source a similarity (CSI) picks vs the budget spread over all;
- ``methods``: per task and split seed, on the whole training split, each of ``transfer.methods``
  (scratch, fine-tuning from one source, a mixture of all sources): the MoE study (Chang et al.).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from tasksim_ray.infra.cache import read_manifest
from tasksim_ray.infra.progress import task_progress
from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.training.multitask import submit_subsets, subset_model
from tasksim_ray.transfer.analysis import (
    auc,
    fold_gains,
    gain_matrix,
    mean_se,
    paired_difference,
    similarity_vs_gain,
    summarise_curve,
)
from tasksim_ray.transfer.cells import CellData, CellSettings, Recipe, cell_key, run_cells
from tasksim_ray.transfer.data import SplitData, TransferData
from tasksim_ray.transfer.recommend import FoldGains, recommend_report

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

    def row(self, target: str, sources: list[str]) -> tuple[float, ...]:
        """The selection metric from ``target`` to each source, higher = more similar."""
        m = np.asarray(self.matrices[self.selection_metric])
        sign = -1.0 if self.kinds[self.selection_metric] == "distance" else 1.0
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
class Plan:
    name: str
    jobs: list[Job]
    finish: Callable[[Any], dict[str, Any]]  # curves, or (methods) the cells


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


def plan_curves(ctx: Context, target: str, sources: list[str]) -> Plan:
    recipes = [SCRATCH, *[ctx.from_task(s) for s in sources]]

    def finish(curves: Curves) -> dict[str, Any]:
        out = {r.label: curve_entry(curves, target, r.label) for r in recipes}
        return {"target": target, "units": ctx.data.units(target), "curves": out}

    return Plan("curves", curve_jobs(ctx, target, recipes), finish)


def curve_entry(curves: Curves, target: str, label: str) -> dict[str, Any]:
    c = curves[(target, label)]
    entry = c["summary"].to_dict()
    if label != "scratch":
        g = fold_gains(curves[(target, "scratch")]["fold_auc"], c["fold_auc"])
        entry["gain_mean"], entry["gain_se"] = mean_se(g)
    return entry


def plan_matrix(ctx: Context) -> Plan:
    targets = ctx.data.targets
    jobs = [j for t in targets for j in curve_jobs(ctx, t, [SCRATCH, *[ctx.from_task(s) for s in targets if s != t]])]

    def finish(curves: Curves) -> dict[str, Any]:
        entries = {t: {r: curve_entry(curves, t, r) for r in ["scratch", *targets] if r != t} for t in targets}
        pairs = [(t, s) for t in targets for s in targets if s != t]
        gain = gain_matrix(targets, {(t, s): entries[t][s]["gain_mean"] for t, s in pairs})
        out: dict[str, Any] = {"targets": targets, "gain": gain.tolist(),
                               "gain_se": gain_matrix(targets, {(t, s): entries[t][s]["gain_se"]
                                                                for t, s in pairs}).tolist(),
                               "curves": entries, "similarity_vs_gain": {}}
        sim = ctx.similarity
        for metric, m in (sim.matrices if sim else {}).items():
            idx = [sim.names.index(t) for t in targets]
            sub = np.asarray(m)[np.ix_(idx, idx)]
            out["similarity_vs_gain"][metric] = similarity_vs_gain(targets, sub, gain, metric,
                                                                   sim.kinds[metric] != "distance")
        if sim:
            per_fold = {t: {s: 100 * fold_gains(curves[(t, "scratch")]["fold_auc"], curves[(t, s)]["fold_auc"])
                            for s in targets if s != t} for t in targets}
            out["recommendation"] = recommendation(ctx, targets, per_fold)
            cells = [c for t in targets for r in ["scratch", *targets] if r != t for c in curves[(t, r)]["cells"]]
            out["recommendation"]["cost"] = {
                "similarity_s": sim.seconds, "transfer_matrix_s": float(sum(c["seconds"] for c in cells)),
                "transfer_matrix_cells": len(cells),
                "task_models_s": float(sum(read_manifest(Path(ctx.model_dirs[t])).get("metrics", {}).get("seconds", 0)
                                           for t in targets))}
        return out

    return Plan("matrix", jobs, finish)


def recommendation(ctx: Context, targets: list[str], per_fold: FoldGains) -> dict[str, Any]:
    """Every metric (and their leave-one-target-out combination with cheap pair features: source
    size, label correlation on the target's training inputs) judged as a source recommender."""
    sim = ctx.similarity
    assert sim is not None
    idx = {t: sim.names.index(t) for t in targets}
    signed = {m: (-1.0 if sim.kinds[m] == "distance" else 1.0) * np.asarray(v) for m, v in sim.matrices.items()}
    scores = {m: {t: {s: float(v[idx[t], idx[s]]) for s in per_fold[t]} for t in targets} for m, v in signed.items()}
    sizes = {s: float(read_manifest(Path(ctx.model_dirs[s])).get("metrics", {}).get("n_train", np.nan))
             for s in {s for row in per_fold.values() for s in row}}
    corr = {t: {s: ctx.data.label_correlation(t, s) for s in per_fold[t]} for t in targets}
    pair = {"log10 source size": {t: {s: float(np.log10(sizes[s])) for s in per_fold[t]} for t in targets},
            "label r": corr, "|label r|": {t: {s: abs(v) for s, v in row.items()} for t, row in corr.items()}}
    rec = recommend_report(scores, per_fold, pair, sizes, ctx.run.cfg.seed)
    return rec | {"gain": "relative AUC improvement over scratch, % of scratch AUC, mean over folds"}


def plan_subset(ctx: Context) -> Plan:
    cfg = ctx.run.cfg
    sources, subset = ctx.data.sources, (ctx.similarity.subset if ctx.similarity else [])
    splits = cfg.transfer.budget.resolved()
    arms: list[tuple[str, str, list[str], tuple[int, int]]] = []  # (target, arm, tasks, split)
    for t in ctx.data.targets:
        diverse = [s for s in subset if s != t]
        for split in splits:
            if diverse:
                arms.append((t, "diverse subset", diverse, split))
            arms.append((t, "all others", [s for s in sources if s != t], split))
    dirs = ctx.pretrain([(tasks, split) for _, _, tasks, split in arms])
    label = {i: f"{arm} {split[0]}x{split[1]}" for i, (_, arm, _, split) in enumerate(arms)}
    recipes = {i: Recipe("finetune", label[i], (str(d),)) for i, d in enumerate(dirs)}
    jobs = [j for t in ctx.data.targets for j in curve_jobs(ctx, t, [SCRATCH])]
    jobs += [j for i, (t, *_) in enumerate(arms) for j in curve_jobs(ctx, t, [recipes[i]])]

    def finish(curves: Curves) -> dict[str, Any]:
        per_target: dict[str, dict[str, Any]] = {t: {"scratch": curve_entry(curves, t, "scratch")}
                                                 for t in ctx.data.targets}
        for i, (t, arm, tasks, split) in enumerate(arms):
            model = subset_model(dirs[i])
            per_target[t][label[i]] = curve_entry(curves, t, label[i]) | {
                "pretrain_tasks": tasks, "labels_used": model.metrics["labels_used"],
                "labels_available": model.metrics["labels_available"],
                "samples_seen": model.metrics["samples_seen"], "pretrain_val_score": model.metrics["best_val_mae"]}
        for t in ctx.data.targets:  # the two arms on the same folds: do they differ beyond fold noise?
            base = curves[(t, "scratch")]["fold_auc"]
            for n, e in splits:
                diverse, others = f"diverse subset {n}x{e}", f"all others {n}x{e}"
                if diverse in per_target[t] and others in per_target[t]:
                    per_target[t][diverse]["vs_all_others"] = paired_difference(
                        100 * fold_gains(base, curves[(t, diverse)]["fold_auc"]),
                        100 * fold_gains(base, curves[(t, others)]["fold_auc"]))
        return {"subset": subset, "splits": [list(s) for s in splits], "targets": per_target,
                "uncovered_targets": [t for t in ctx.data.targets if not [s for s in subset if s != t]]}

    return Plan("subset", jobs, finish)


def plan_strategies(ctx: Context, pairs: list[tuple[str, str]]) -> Plan:
    """Each fine-tuning variant of ``transfer.variants`` on each (target, source) pair."""
    variants = ctx.run.cfg.transfer.variant_configs()
    recipes = {(t, s): [Recipe("finetune", f"{s}: {name}", (ctx.model_dirs[s],), finetune=ft)
                        for name, ft in variants.items()] for t, s in pairs}
    jobs = [j for (t, _), rs in recipes.items() for j in curve_jobs(ctx, t, [SCRATCH, *rs])]

    def finish(curves: Curves) -> dict[str, Any]:
        return {"variants": {name: ft.model_dump() for name, ft in variants.items()},
                "pairs": [{"target": t, "source": s, "scratch": curve_entry(curves, t, "scratch"),
                           "variants": {r.label.split(": ", 1)[1]: curve_entry(curves, t, r.label) for r in rs}}
                          for (t, s), rs in recipes.items()]}

    return Plan("strategies", jobs, finish)


def plan_moe(ctx: Context) -> Plan:
    sources, init = ctx.data.sources, ctx.run.cfg.transfer.moe.init
    recipes = {}
    for t in ctx.data.targets:
        experts = [s for s in sources if s != t]
        theta = ctx.similarity.row(t, experts) if init == "similarity" and ctx.similarity else None
        recipes[t] = (experts, Recipe("moe", "moe", tuple(ctx.model_dirs[s] for s in experts), theta))
    jobs = [j for t, (_, r) in recipes.items() for j in curve_jobs(ctx, t, [SCRATCH, r])]
    largest = ctx.run.cfg.transfer.sizes[-1]

    def finish(curves: Curves) -> dict[str, Any]:
        gates = np.zeros((len(recipes), len(sources)))
        out: dict[str, Any] = {"experts": sources, "k": ctx.run.cfg.transfer.moe.k, "init": init, "targets": {}}
        for i, (t, (experts, _)) in enumerate(recipes.items()):
            cells = [c for c in curves[(t, "moe")]["cells"] if c["size"] == largest]
            mean_gate = np.mean([c["gates"] for c in cells], axis=0)
            gates[i, [sources.index(e) for e in experts]] = mean_gate
            out["targets"][t] = {"scratch": curve_entry(curves, t, "scratch"), "moe": curve_entry(curves, t, "moe"),
                                 "gates": dict(zip(experts, mean_gate.round(4).tolist()))}
        out["gate_matrix"] = gates.tolist()
        return out

    return Plan("moe", jobs, finish)


def plan_methods(ctx: Context, recipes: dict[str, Recipe]) -> Plan:
    """Each method's recipe per task and split seed; summarised as test MAE mean +- std over seeds
    (numpy's std, as published) and SE, the improvement over scratch (% of its MAE, paired by seed),
    wins, mean gates, the mean per-layer weight drift of fine-tuned cells, and cost per method."""
    data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
    assert isinstance(data, SplitData)
    jobs = [(data.cell(t, i, s), r) for t in data.targets for i, s in enumerate(seeds) for r in recipes.values()]

    def finish(cells: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"methods": list(recipes), "seeds": seeds, "targets": {}, "cost": {}}
        experts = list(recipes["moe"].checkpoints) if "moe" in recipes else []
        for t in data.targets:
            mine = [c for c in cells if c["target"] == t]
            entry: dict[str, Any] = {"units": data.units(t), "n": mine[0]["n"]}
            by_seed = {m: {c["fold"]: c for c in mine if c["recipe"] == m} for m in recipes}
            for m in recipes:
                maes = np.array([by_seed[m][s]["test_mae"] for s in seeds])
                entry[m] = {"mean": float(maes.mean()), "std": float(maes.std()), "seeds": len(maes),
                            "se": mean_se(maes)[1], "values": maes.tolist()}
                if "scratch" in recipes and m != "scratch":
                    base = np.array([by_seed["scratch"][s]["test_mae"] for s in seeds])
                    entry[m]["gain_mean"], entry[m]["gain_se"] = mean_se(100 * (base - maes) / base)
                drift = [by_seed[m][s]["drift"] for s in seeds if "drift" in by_seed[m][s]]
                if drift:
                    entry[m]["drift"] = {g: float(np.mean([d[g] for d in drift])) for g in drift[0]}
            entry["best"] = min(recipes, key=lambda m: entry[m]["mean"])
            if experts:
                gates = np.mean([c["gates"] for c in mine if c["recipe"] == "moe"], axis=0)
                entry["gates"] = dict(zip([Path(e).name for e in experts], gates.round(4).tolist()))
            out["targets"][t] = entry
        for m in recipes:
            mine = [c for c in cells if c["recipe"] == m]
            out["cost"][m] = {"cells": len(mine), "epochs": float(np.mean([c["epochs_run"] for c in mine])),
                              "s_per_epoch": float(np.mean([c["seconds"] / max(c["epochs_run"], 1) for c in mine])),
                              "s_per_cell": float(np.mean([c["seconds"] for c in mine]))}
        out["wins"] = {m: sum(e["best"] == m for e in out["targets"].values()) for m in recipes}
        per_source = {m.removeprefix("from "): r for m, r in recipes.items() if m.startswith("from ")}
        if len(per_source) >= 3 and "scratch" in recipes and len(data.targets) >= 3:
            out["recommendation"] = source_recommendation(ctx, per_source, cells)
        out["cells"] = cells
        return out

    return Plan("methods", jobs, finish)


def source_recommendation(ctx: Context, sources: dict[str, Recipe], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Each published source as a recommendation for each task, judged against fine-tuning from it:
    gain = test MAE improvement over scratch (% of scratch) per split seed; the score is LogME of the
    source's frozen features on the target's own training labels (what a user has before training)."""
    data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
    assert isinstance(data, SplitData)
    mae = {(c["target"], c["recipe"], c["fold"]): c["test_mae"] for c in cells}
    store = ray.get(ctx.store_ref)
    start = time.perf_counter()
    scores: dict[str, dict[str, float]] = {}
    for t in data.targets:
        train = [data.cell(t, i, s) for i, s in enumerate(seeds)]
        scores[t] = {name: float(np.mean([logme_score(store[f"feat/{Path(r.checkpoints[0]).name}"][c.train_pos].numpy(),
                                                      c.y_train) for c in train])) for name, r in sources.items()}
    seconds = time.perf_counter() - start
    per_fold = {t: {name: np.array([100 * (mae[(t, "scratch", s)] - mae[(t, f"from {name}", s)]) / mae[(t, "scratch", s)]
                                    for s in seeds]) for name in sources} for t in data.targets}
    rec = recommend_report({"logme": scores}, per_fold, {}, dict.fromkeys(sources, float("nan")), ctx.run.cfg.seed)
    rec["gain"] = "test MAE improvement over scratch, % of scratch MAE, mean over split seeds"
    mine = [c for c in cells if c["recipe"].startswith("from ")]
    rec["cost"] = {"similarity_s": seconds, "transfer_matrix_s": float(sum(c["seconds"] for c in mine)),
                   "transfer_matrix_cells": len(mine), "task_models_s": 0.0}
    return rec


def run_studies(ctx: Context, plans: list[Plan]) -> dict[str, Any]:
    """Run all plans' cells in one go (shared cells once) and summarise each plan."""
    tc = ctx.run.cfg.transfer
    # fold by fold (stable otherwise): a study stopped early has whole folds, which a rerun with
    # fewer transfer.folds reuses
    jobs = sorted((j for p in plans for j in p.jobs), key=lambda j: j[0].fold)
    n_cells = len({cell_key(c, r, ctx.settings) for c, r in jobs})
    with ctx.run.timed("transfer") as timing, task_progress(ctx.run.console, "transfer", n_cells) as advance:
        results = run_cells(ctx.store_ref, jobs, ctx.settings, ctx.run.artifacts / "cells", tc.num_cpus, tc.num_gpus,
                            after=ctx.pending, on_done=advance)
        timing["cells"] = n_cells
    unique = list({(r["target"], r["recipe"], r["size"], r["fold"]): r for r in results}.values())
    curves = _curves([r for r in unique if r["size"] is not None], tc.sizes, tc.folds)
    return {p.name: p.finish(unique if p.name == "methods" else curves) for p in plans}

