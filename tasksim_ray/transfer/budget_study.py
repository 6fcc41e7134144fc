"""The budget study: which single source to pretrain on, under one fixed budget, and is the one a
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

from typing import Any

import numpy as np

from tasksim_ray.training.multitask import subset_model
from tasksim_ray.transfer.analysis import fold_gains, gain_matrix, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.study import SCRATCH, Context, Curves, Plan, curve_entry, curve_jobs, recommendation

ALL = "all others"


def pick_metric(ctx: Context) -> str:
    """CSI when it ran (the claim under test), else the selection metric."""
    assert ctx.similarity is not None
    return "csi" if "csi" in ctx.similarity.matrices else ctx.similarity.selection_metric


def ranked_sources(ctx: Context, metric: str, target: str, sources: list[str]) -> list[str]:
    """``sources`` from most to least recommended for ``target`` by ``metric`` (distances ascending)."""
    sim = ctx.similarity
    assert sim is not None
    m = np.asarray(sim.matrices[metric])
    sign = -1.0 if sim.kinds[metric] == "distance" else 1.0
    score = {s: sign * m[sim.names.index(target), sim.names.index(s)] for s in sources}
    return sorted(sources, key=lambda s: (-score[s], s))


def plan_budget(ctx: Context) -> Plan:
    targets, sources = ctx.data.targets, ctx.data.sources
    split = ctx.run.cfg.transfer.budget.resolved()[0]
    tag = f"{split[0]}x{split[1]}"
    arms = [(t, s, [s]) for t in targets for s in sources if s != t]
    arms += [(t, ALL, [s for s in sources if s != t]) for t in targets]
    dirs = ctx.pretrain([(tasks, split) for _, _, tasks in arms])  # a source alone runs once for all targets
    label = {(t, name): f"{name} {tag}" for t, name, _ in arms}
    jobs = [j for t in targets for j in curve_jobs(ctx, t, [SCRATCH])]
    jobs += [j for (t, name, _), d in zip(arms, dirs) for j in curve_jobs(ctx, t, [Recipe("finetune", label[(t, name)],
                                                                                         (str(d),))])]

    def finish(curves: Curves) -> dict[str, Any]:
        metric = pick_metric(ctx)
        per_target: dict[str, dict[str, Any]] = {}
        per_fold: dict[str, dict[str, np.ndarray]] = {}
        for t in targets:
            base = curves[(t, "scratch")]["fold_auc"]
            entries = {"scratch": curve_entry(curves, t, "scratch")}
            for (tt, name, tasks), d in zip(arms, dirs):
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
        rec["gain"] = f"relative AUC improvement over scratch after pretraining on the source alone under {tag}, %"
        return {"split": list(split), "pick_metric": metric, "targets": per_target, "names": sources,
                "gain": gain.tolist(), "recommendation": rec,
                "picked_beats_all_others": sum(e["picked_gain"] > e["all_others_gain"] for e in per_target.values()),
                "picked_is_best": sum(e["picked"] == e["measured_best"] for e in per_target.values())}

    return Plan("budget", jobs, finish)
