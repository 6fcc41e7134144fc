"""The pre-train/fine-tune study (``tasksim ptft``): pairwise transfer against multi-property pretraining (MPT).

Per target: scratch; fine-tuning from each other task's model (the pairwise PT-FT gain matrix);
and fine-tuning from one model pretrained on all other tasks at once (MPT: budgeted multi-task
pretraining with a masked loss, the first split of ``transfer.budget``). Does MPT beat the best
pairwise source, picked with hindsight? Targets in ``transfer.ood`` are never a source: they are
the out-of-distribution check, fine-tuned from every in-distribution task and from MPT over all of
them. Gains are reported on the learning-curve AUC and at the largest training size (the fixed
fine-tuning size of the published study), paired by fold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.errors import TasksimError
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, mean_se, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import curve_figures
from tasksim_ray.transfer.study import SCRATCH, Context, Curves, Done, Job, Section, Study, curve_entry, curve_jobs

MPT = "MPT"


def size_gain(curves: Curves, target: str, label: str, size: int, folds: int) -> np.ndarray:
    """Per-fold relative test-MAE improvement over scratch (%) at one training size."""
    def mae(lbl: str) -> np.ndarray:
        by_fold = {c["fold"]: c["test_mae"] for c in curves[(target, lbl)]["cells"] if c["size"] == size}
        return np.array([by_fold[f] for f in range(folds)], dtype=float)

    base = mae("scratch")
    return 100 * (base - mae(label)) / base


class PTFTStudy(Study):
    def plan(self, ctx: Context) -> list[Job]:
        tc = ctx.run.cfg.transfer
        targets = ctx.data.targets
        missing = [t for t in tc.ood if t not in targets]
        if missing:
            raise TasksimError(f"transfer.ood: {missing} are not among the study's targets {targets}")
        self.in_dist = sources = [t for t in targets if t not in tc.ood]
        if len(sources) < 2:
            raise TasksimError(f"the ptft study needs at least 2 in-distribution tasks, got {sources}")
        self.split = split = tc.budget.resolved()[0]
        self.label = f"{MPT} {split[0]}x{split[1]}"
        self.mine = mine = {t: [s for s in sources if s != t] for t in targets}
        dirs = ctx.pretrain([(mine[t], split) for t in targets])
        mpt = {t: Recipe("finetune", self.label, (str(d),)) for t, d in zip(targets, dirs)}
        return [j for t in targets for j in curve_jobs(ctx, t, [SCRATCH, *[ctx.from_task(s) for s in mine[t]], mpt[t]])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        tc, targets, sources, mine, label, curves = (ctx.run.cfg.transfer, ctx.data.targets, self.in_dist, self.mine,
                                                     self.label, done.curves)
        largest, folds = tc.sizes[-1], tc.folds
        auc_gain = np.full((len(targets), len(sources)), np.nan)
        fixed_gain = np.full_like(auc_gain, np.nan)
        per_target: dict[str, Any] = {}
        for i, t in enumerate(targets):
            base = curves[(t, "scratch")]["fold_auc"]
            auc_g = {s: 100 * fold_gains(base, curves[(t, s)]["fold_auc"]) for s in [*mine[t], label]}
            fix_g = {s: size_gain(curves, t, s, largest, folds) for s in [*mine[t], label]}
            for s in mine[t]:
                auc_gain[i, sources.index(s)] = auc_g[s].mean()
                fixed_gain[i, sources.index(s)] = fix_g[s].mean()
            best = max(mine[t], key=lambda s: float(fix_g[s].mean()))
            per_target[t] = {
                "ood": t in tc.ood, "curves": {r: curve_entry(curves, t, r) for r in ["scratch", *mine[t], label]},
                "best_pairwise": best, "best_pairwise_gain": mean_se(fix_g[best]),
                "mpt_gain": mean_se(fix_g[label]), "mpt_auc_gain": mean_se(auc_g[label]),
                "mpt_vs_best_pairwise": paired_difference(fix_g[label], fix_g[best]),
                "mpt_beats_best_pairwise": bool(fix_g[label].mean() > fix_g[best].mean()),
                "mpt_beats_every_pairwise": bool(all(fix_g[label].mean() > fix_g[s].mean() for s in mine[t])),
                "pairs_beating_scratch": int(sum(fix_g[s].mean() > 0 for s in mine[t])), "pairs": len(mine[t])}
        ind = [e for e in per_target.values() if not e["ood"]]
        return {"targets": targets, "sources": sources, "ood": list(tc.ood), "split": list(self.split), "mpt": label,
                "size": largest, "folds": folds, "auc_gain": auc_gain.tolist(), "fixed_gain": fixed_gain.tolist(),
                "per_target": per_target,
                "pairs_beating_scratch": sum(e["pairs_beating_scratch"] for e in per_target.values()),
                "pairs": sum(e["pairs"] for e in per_target.values()),
                "mpt_beats_best_pairwise": sum(e["mpt_beats_best_pairwise"] for e in ind),
                "in_distribution_targets": len(ind)}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        figures: dict[str, Path] = {}
        md = ptft_markdown(out, result, figures)
        shown = {t: {k: e["curves"][k] for k in ("scratch", e["best_pairwise"], result["mpt"])}
                 for t, e in result["per_target"].items()}
        figures |= curve_figures(out, "ptft", shown, ctx.data.units)
        return Section(md, figures)


def ptft_markdown(out: Path, r: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    """The pairwise gain matrix (figure and table), MPT against the best pairwise source and scratch."""
    def gain(g: list[float]) -> str:  # one fold has no spread to report
        return f"{g[0]:.1f}" if r["folds"] == 1 else f"{g[0]:.1f} ± {g[1]:.1f}"

    n, e = r["split"]
    paths["ptft_gain"] = out / "ptft_gain_matrix.png"
    plots.plot_gain_heatmap(paths["ptft_gain"], r["sources"], np.array(r["fixed_gain"]) / 100,
                            f"PT-FT gain (%) at {r['size']} training points", targets=r["targets"],
                            label=f"test-MAE gain over scratch at n = {r['size']} (%)")
    md = ["## Pre-train / fine-tune: pairwise sources and multi-property pretraining", "",
          f"Gain: relative test-MAE improvement over scratch at {r['size']} fine-tuning points (%), mean over "
          f"folds. MPT: one model pretrained on all other in-distribution tasks at once, budget {n} samples x "
          f"{e} epochs, masked loss. Out-of-distribution targets (never a source): {', '.join(r['ood']) or 'none'}.",
          "", "| target \\ source | " + " | ".join(r["sources"]) + " |", "|---" * (len(r["sources"]) + 1) + "|"]
    md += [f"| {t} | " + " | ".join("-" if v is None or np.isnan(v) else f"{v:.1f}" for v in row) + " |"
           for t, row in zip(r["targets"], r["fixed_gain"])]
    md += ["", f"Pairwise PT-FT beats scratch on {r['pairs_beating_scratch']} of {r['pairs']} pairs.", "",
           "| target | best pairwise (gain) | MPT gain | MPT - best pairwise [95%] | beyond? | MPT beats every pair? |",
           "|---|---|---|---|---|---|"]
    for t, x in r["per_target"].items():
        d = x["mpt_vs_best_pairwise"]
        diff = (f"{d['mean']:.1f} (1 fold)" if r["folds"] == 1
                else f"{d['mean']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}]")
        md.append(f"| {t}{' (OOD)' if x['ood'] else ''} | {x['best_pairwise']} ({gain(x['best_pairwise_gain'])}) | "
                  f"{gain(x['mpt_gain'])} | {diff} | {'yes' if d['differ'] else 'no'} | "
                  f"{'yes' if x['mpt_beats_every_pairwise'] else 'no'} |")
    md += ["", f"MPT beats the best pairwise source on {r['mpt_beats_best_pairwise']} of "
               f"{r['in_distribution_targets']} in-distribution targets.", ""]
    return md
