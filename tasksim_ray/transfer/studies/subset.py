"""The subset study: per target, pretrain on the selected diverse subset vs on all other tasks
under the same budget (samples x epochs), then fine-tune both on the target (``tasksim subset-study``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasksim_ray.config import PipelineConfig
from tasksim_ray.training.multitask import subset_model
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import curve_figures, curve_table, relative_bars
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study, curve_entry, curve_jobs


class SubsetStudy(Study):
    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return True

    def plan(self, ctx: Context) -> list[Job]:
        sources, subset = ctx.data.sources, (ctx.similarity.subset if ctx.similarity else [])
        self.subset, self.splits = subset, ctx.run.cfg.transfer.budget.resolved()
        self.arms: list[tuple[str, str, list[str], tuple[int, int]]] = []  # (target, arm, tasks, split)
        for t in ctx.data.targets:
            diverse = [s for s in subset if s != t]
            for split in self.splits:
                if diverse:
                    self.arms.append((t, "diverse subset", diverse, split))
                self.arms.append((t, "all others", [s for s in sources if s != t], split))
        self.dirs = ctx.pretrain([(tasks, split) for _, _, tasks, split in self.arms])
        self.labels = [f"{arm} {split[0]}x{split[1]}" for _, arm, _, split in self.arms]
        recipes = [Recipe("finetune", label, (str(d),)) for label, d in zip(self.labels, self.dirs)]
        jobs = [j for t in ctx.data.targets for j in curve_jobs(ctx, t, [SCRATCH])]
        return jobs + [j for (t, *_), r in zip(self.arms, recipes) for j in curve_jobs(ctx, t, [r])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        curves = done.curves
        per_target: dict[str, dict[str, Any]] = {t: {"scratch": curve_entry(curves, t, "scratch")}
                                                 for t in ctx.data.targets}
        for (t, _, tasks, _), label, d in zip(self.arms, self.labels, self.dirs):
            model = subset_model(d)
            per_target[t][label] = curve_entry(curves, t, label) | {
                "pretrain_tasks": tasks, "labels_used": model.metrics["labels_used"],
                "labels_available": model.metrics["labels_available"],
                "samples_seen": model.metrics["samples_seen"], "pretrain_val_score": model.metrics["best_val_mae"]}
        for t in ctx.data.targets:  # the two arms on the same folds: do they differ beyond fold noise?
            base = curves[(t, "scratch")]["fold_auc"]
            for n, e in self.splits:
                diverse, others = f"diverse subset {n}x{e}", f"all others {n}x{e}"
                if diverse in per_target[t] and others in per_target[t]:
                    per_target[t][diverse]["vs_all_others"] = paired_difference(
                        100 * fold_gains(base, curves[(t, diverse)]["fold_auc"]),
                        100 * fold_gains(base, curves[(t, others)]["fold_auc"]))
        return {"subset": self.subset, "splits": [list(s) for s in self.splits], "targets": per_target,
                "uncovered_targets": [t for t in ctx.data.targets if not [s for s in self.subset if s != t]]}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        targets = list(result["targets"])
        labels = list(dict.fromkeys(lbl for e in result["targets"].values() for lbl in e))
        figures = {"subset_bars": out / "subset_study.png"}
        plots.plot_subset_bars(figures["subset_bars"], targets, relative_bars(result["targets"], targets, labels),
                               "AUC relative to scratch (lower is better)",
                               f"Diverse subset {result['subset']} vs all other tasks vs scratch", reference=1.0)
        figures |= curve_figures(out, "subset", result["targets"], ctx.data.units)
        md = ["## Subset study", "", f"Diverse subset: {', '.join(result['subset']) or '(none)'}; budget splits "
              f"(samples x epochs): {result['splits']}.", "", *curve_table(result["targets"], labels), "",
              "| target | arm | pretraining tasks | labels used / available |", "|---|---|---|---|"]
        md += [f"| {t} | {lbl} | {', '.join(e['pretrain_tasks'])} | {e['labels_used']} / {e['labels_available']} |"
               for t, entries in result["targets"].items() for lbl, e in entries.items() if "pretrain_tasks" in e]
        md += ["", "Diverse subset minus all others, gain points per fold (paired), mean [95% t interval]:", "",
               "| target | budget | difference | beyond the interval? |", "|---|---|---|---|"]
        md += [f"| {t} | {lbl.removeprefix('diverse subset ')} | {d['mean']:.1f} [{d['ci'][0]:.1f}, "
               f"{d['ci'][1]:.1f}] | {'yes' if d['differ'] else 'no'} |" for t, entries in result["targets"].items()
               for lbl, e in entries.items() if (d := e.get("vs_all_others"))]
        return Section([*md, ""], figures)
