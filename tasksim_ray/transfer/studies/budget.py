"""The budget study (``tasksim budget``): which single source to pretrain on, under one fixed budget, and is the one a
similarity picks better than the same budget spread over every source?

Per target, every other task alone is a pretraining set under the same budget C = N samples per
epoch x E epochs (the first split of ``transfer.budget``), and so are all other tasks together. Each
pretrained model is fine-tuned on the target's learning-curve cells. Because every source gets the
same budget, a source's gain measures how aligned its data is with the target, not how much of it
there is: what CSI (Frechet distance between the tasks' input embeddings) claims to predict. The
study scores every similarity metric as a recommender of the single source (top-1 / top-3 hit,
regret, Spearman), and compares the source the pick metric ranks first (lowest CSI when CSI ran,
else the selection metric's best) alone against all others under the same budget, paired by fold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.registry import METRICS
from tasksim_ray.training.multitask import subset_model
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, gain_matrix, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import write_recommendation
from tasksim_ray.transfer.study import (
    SCRATCH,
    Context,
    Done,
    Job,
    Section,
    Study,
    curve_entry,
    curve_jobs,
    recommendation,
)

ALL = "all others"


def pick_metric(ctx: Context) -> str:
    """The first metric of the tasks' own data distributions that ran (CSI: the claim under test),
    else the selection metric."""
    assert ctx.similarity is not None
    of_data = [m for m in ctx.similarity.matrices if {"dataset_features", "node_features"} & set(METRICS.get(m).needs)]
    return of_data[0] if of_data else ctx.similarity.selection_metric


def ranked_sources(ctx: Context, metric: str, target: str, sources: list[str]) -> list[str]:
    """``sources`` from most to least recommended for ``target`` by ``metric`` (distances ascending)."""
    assert ctx.similarity is not None
    score = dict(zip(sources, ctx.similarity.row(target, sources, metric)))
    return sorted(sources, key=lambda s: (-score[s], s))


class BudgetStudy(Study):
    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return True

    def plan(self, ctx: Context) -> list[Job]:
        targets, sources = ctx.data.targets, ctx.data.sources
        self.split = split = ctx.run.cfg.transfer.budget.resolved()[0]
        self.tag = tag = f"{split[0]}x{split[1]}"
        arms = [(t, s, [s]) for t in targets for s in sources if s != t]
        arms += [(t, ALL, [s for s in sources if s != t]) for t in targets]
        self.arms = arms
        self.dirs = ctx.pretrain([(tasks, split) for _, _, tasks in arms])  # a source alone runs once for all targets
        self.label = {(t, name): f"{name} {tag}" for t, name, _ in arms}
        jobs = [j for t in targets for j in curve_jobs(ctx, t, [SCRATCH])]
        return jobs + [j for (t, name, _), d in zip(arms, self.dirs)
                       for j in curve_jobs(ctx, t, [Recipe("finetune", self.label[(t, name)], (str(d),))])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        targets, sources, curves, label = ctx.data.targets, ctx.data.sources, done.curves, self.label
        metric = pick_metric(ctx)
        per_target: dict[str, dict[str, Any]] = {}
        per_fold: dict[str, dict[str, np.ndarray]] = {}
        for t in targets:
            base = curves[(t, "scratch")]["fold_auc"]
            entries = {"scratch": curve_entry(curves, t, "scratch")}
            for (tt, name, tasks), d in zip(self.arms, self.dirs):
                if tt == t:
                    model = subset_model(d)
                    entries[label[(t, name)]] = curve_entry(curves, t, label[(t, name)]) | {
                        "pretrain_tasks": tasks, "labels_used": model.metrics["labels_used"],
                        "samples_seen": model.metrics["samples_seen"]}
            mine = [s for s in sources if s != t]
            per_fold[t] = {s: 100 * fold_gains(base, curves[(t, label[(t, s)])]["fold_auc"]) for s in mine}
            ranked = ranked_sources(ctx, metric, t, mine)
            best = max(mine, key=lambda s: float(np.mean(per_fold[t][s])))
            picked = 100 * fold_gains(base, curves[(t, label[(t, ranked[0])])]["fold_auc"])
            spread = 100 * fold_gains(base, curves[(t, label[(t, ALL)])]["fold_auc"])
            per_target[t] = {"curves": entries, "ranking": ranked, "picked": ranked[0], "measured_best": best,
                             "picked_gain": float(picked.mean()), "best_gain": float(np.mean(per_fold[t][best])),
                             "all_others_gain": float(spread.mean()),
                             "picked_vs_all_others": paired_difference(picked, spread)}
        gain = gain_matrix(sources, {(t, s): float(np.mean(g)) / 100 for t in targets for s, g in per_fold[t].items()})
        rec = recommendation(ctx, targets, per_fold)
        single = [c for t in targets for s in per_fold[t] for c in curves[(t, label[(t, s)])]["cells"]]
        assert ctx.similarity is not None
        rec["cost"] = {"similarity_s": ctx.similarity.seconds, "transfer_matrix_s": float(sum(c["seconds"] for c in single)),
                       "transfer_matrix_cells": len(single), "task_models_s": 0.0}
        rec["gain"] = f"relative AUC improvement over scratch after pretraining on the source alone under {self.tag}, %"
        return {"split": list(self.split), "pick_metric": metric, "targets": per_target, "names": sources,
                "gain": gain.tolist(), "recommendation": rec,
                "picked_beats_all_others": sum(e["picked_gain"] > e["all_others_gain"] for e in per_target.values()),
                "picked_is_best": sum(e["picked"] == e["measured_best"] for e in per_target.values())}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        n, e = result["split"]
        figures: dict[str, Path] = {}
        figures["budget_gain"] = out / "budget_gain_matrix.png"
        plots.plot_gain_heatmap(figures["budget_gain"], result["names"], np.array(result["gain"], dtype=float),
                                f"Gain (%) from each source alone, budget {n} x {e}")
        rec = write_recommendation(out, result["recommendation"], f"{ctx.run.cfg.name}, single sources under one budget",
                                   "budget_recommendation")
        figures |= {f"budget_{k}": v for k, v in rec.items()}
        md = ["## Budget study: one source alone vs the same budget over all", "",
              f"Budget {n} samples per epoch x {e} epochs = {n * e} samples for every pretraining. Picked: the source "
              f"ranked first by **{result['pick_metric']}**. Gain: relative AUC improvement over scratch (%), mean over "
              "folds; picked minus all others paired by fold, mean [95% t interval]. Every metric as a recommender of "
              "the single source: `budget_recommendation.md`.", "",
              "| target | picked | its gain | measured best (gain) | all others' gain | picked - all others | beyond? |",
              "|---|---|---|---|---|---|---|"]
        for t, x in result["targets"].items():
            d = x["picked_vs_all_others"]
            md.append(f"| {t} | {x['picked']} | {x['picked_gain']:.1f} | {x['measured_best']} ({x['best_gain']:.1f}) | "
                      f"{x['all_others_gain']:.1f} | {d['mean']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}] | "
                      f"{'yes' if d['differ'] else 'no'} |")
        md += ["", f"The picked source alone beats all others under the same budget for {result['picked_beats_all_others']} "
                   f"of {len(result['targets'])} targets; it is the measured best single source for {result['picked_is_best']}.", ""]
        return Section(md, figures)
