"""The subset study (``tasksim subset-study``): per target, pretrain on the selected diverse subset, on
any named task sets (``transfer.subset.extra``, e.g. paper 000's {A, HOMO, Cv}) and on all other tasks,
then fine-tune each on the target.

Two protocols (``transfer.subset.arms``), so both claims can be tested: ``budget``, every set under
the same budget of samples x epochs (does a diverse set use a fixed compute better?), and
``all_labels``, every set with all of its tasks' pool labels for the same epochs (paper 000: is a
diverse third of the data as good as all of it?). Each set is compared with all others under the
same protocol, paired by fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.training.multitask import all_labels_run, submit_subsets, subset_model
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import curve_figures, curve_table, relative_bars
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study, curve_entry, curve_jobs

DIVERSE, ALL = "diverse subset", "all others"


@dataclass(frozen=True)
class Arm:
    """One pretraining of one target's study: a task set under a protocol (``split`` None: all labels)."""

    target: str
    name: str
    tasks: tuple[str, ...]
    split: tuple[int, int] | None

    @property
    def protocol(self) -> str:
        return "all labels" if self.split is None else f"{self.split[0]}x{self.split[1]}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.protocol}"


class SubsetStudy(Study):
    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return True

    def plan(self, ctx: Context) -> list[Job]:
        tc = ctx.run.cfg.transfer
        sources, subset = ctx.data.sources, (ctx.similarity.subset if ctx.similarity else [])
        for name, tasks in tc.subset.extra.items():
            if stray := [t for t in tasks if t not in sources]:
                raise TasksimError(f"transfer.subset.extra.{name}: {stray} are not kept tasks; kept: {sources}")
        self.subset, self.splits = subset, tc.budget.resolved()
        self.epochs = tc.subset.all_labels_epochs or self.splits[0][1]
        sets = {DIVERSE: subset, **tc.subset.extra}
        protocols = [*(self.splits if "budget" in tc.subset.arms else []),
                     *([None] if "all_labels" in tc.subset.arms else [])]
        self.arms: list[Arm] = []
        for t in ctx.data.targets:
            mine = {name: tuple(s for s in tasks if s != t) for name, tasks in sets.items()}
            mine[ALL] = tuple(s for s in sources if s != t)
            self.arms += [Arm(t, name, tasks, split) for split in protocols for name, tasks in mine.items() if tasks]
        budgeted = [a for a in self.arms if a.split is not None]
        dirs = dict(zip(budgeted, ctx.pretrain([(list(a.tasks), a.split) for a in budgeted]) if budgeted else []))
        if whole := [a for a in self.arms if a.split is None]:
            data = [ctx.data.subset(list(a.tasks)) for a in whole]
            runs = [all_labels_run(d, tc.budget, self.epochs) for d in data]
            cfg = ctx.run.cfg
            got, pending = submit_subsets(ctx.store_ref, [(d, split) for d, (_, split) in zip(data, runs)], cfg.model,
                                          runs[0][0], cfg.seed, ctx.run.artifacts / "subset-models", tc.num_cpus,
                                          tc.num_gpus)
            ctx.pending |= pending
            dirs |= dict(zip(whole, got))
        self.dirs = dirs
        jobs = [j for t in ctx.data.targets for j in curve_jobs(ctx, t, [SCRATCH])]
        return jobs + [j for a in self.arms for j in curve_jobs(ctx, a.target, [Recipe("finetune", a.label,
                                                                                       (str(dirs[a]),))])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        curves, cfg = done.curves, ctx.run.cfg
        per_target: dict[str, dict[str, Any]] = {t: {"scratch": curve_entry(curves, t, "scratch")}
                                                 for t in ctx.data.targets}
        for a in self.arms:
            model = subset_model(self.dirs[a])
            per_target[a.target][a.label] = curve_entry(curves, a.target, a.label) | {
                "set": a.name, "protocol": a.protocol, "pretrain_tasks": list(a.tasks),
                "labels_used": model.metrics["labels_used"], "labels_available": model.metrics["labels_available"],
                "samples_seen": model.metrics["samples_seen"], "pretrain_val_score": model.metrics["best_val_mae"]}
        for a in self.arms:  # each set against all others under the same protocol, on the same folds
            others = next((b for b in self.arms if (b.target, b.name, b.split) == (a.target, ALL, a.split)), None)
            if a.name == ALL or others is None:
                continue
            base = curves[(a.target, "scratch")]["fold_auc"]
            mine, theirs = (100 * fold_gains(base, curves[(a.target, x.label)]["fold_auc"]) for x in (a, others))
            entry = per_target[a.target][a.label]
            entry["vs_all_others"] = paired_difference(mine, theirs)
            entry["data_fraction"] = entry["labels_used"] / per_target[a.target][others.label]["labels_used"]
        tc = cfg.transfer
        return {"subset": self.subset, "extra": dict(tc.subset.extra), "splits": [list(s) for s in self.splits],
                "arms": list(tc.subset.arms), "all_labels_epochs": self.epochs, "targets": per_target,
                "uncovered_targets": [t for t in ctx.data.targets if not [s for s in self.subset if s != t]],
                "setting": {"kept_tasks": list(ctx.data.sources), "corr_threshold": cfg.preprocess.corr_threshold,
                            "split": [round(100 * f) for f in cfg.preprocess.split], "folds": tc.folds,
                            "sizes": list(tc.sizes)}}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        targets = list(result["targets"])
        labels = list(dict.fromkeys(lbl for e in result["targets"].values() for lbl in e))
        figures = {"subset_bars": out / "subset_study.png"}
        sets = ", ".join(f"{k} {v}" for k, v in result.get("extra", {}).items())
        plots.plot_subset_bars(figures["subset_bars"], targets, relative_bars(result["targets"], targets, labels),
                               "AUC relative to scratch (lower is better)",
                               f"Diverse subset {result['subset']}{', ' + sets if sets else ''} vs all others",
                               reference=1.0)
        figures |= curve_figures(out, "subset", result["targets"], ctx.data.units)
        md = ["## Subset study", "", f"Diverse subset: {', '.join(result['subset']) or '(none)'}"
              + (f"; other sets: {sets}" if sets else "") + f". Protocols: budget splits (samples x epochs) "
              f"{result['splits'] if 'budget' in result.get('arms', ['budget']) else 'not run'}"
              + (f"; all labels: every pool label of the set's tasks once per epoch for {result['all_labels_epochs']} "
                 "epochs" if "all_labels" in result.get("arms", []) else "") + ".", "",
              *curve_table(result["targets"], labels), "",
              "| target | arm | pretraining tasks | labels used / available | samples seen |", "|---|---|---|---|---|"]
        md += [f"| {t} | {lbl} | {', '.join(e['pretrain_tasks'])} | {e['labels_used']} / {e['labels_available']} | "
               f"{e.get('samples_seen', '')} |"
               for t, entries in result["targets"].items() for lbl, e in entries.items() if "pretrain_tasks" in e]
        md += ["", "Each set minus all others under the same protocol, gain points per fold (paired), mean [95% t "
                   "interval]; data: the set's distinct pretraining labels as a fraction of all others'.", "",
               "| target | set | protocol | difference | beyond the interval? | data |", "|---|---|---|---|---|---|"]
        md += [f"| {t} | {e.get('set', lbl)} | {e.get('protocol', '')} | {d['mean']:.1f} [{d['ci'][0]:.1f}, "
               f"{d['ci'][1]:.1f}] | {'yes' if d['differ'] else 'no'} | {e.get('data_fraction', np.nan):.2f} |"
               for t, entries in result["targets"].items() for lbl, e in entries.items()
               if (d := e.get("vs_all_others"))]
        md += ["", *outcome_lines(result), ""]
        return Section(md, figures)

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        """Paper 000's stated setting and outcomes (``000/facts``) as this run measured them."""
        s, targets = result["setting"], result["targets"]
        arms = [e for entries in targets.values() for e in entries.values() if "pretrain_tasks" in e]
        rows: dict[str, Any] = {"corr_threshold": s["corr_threshold"], "split": s["split"], "folds": s["folds"],
                                "kept_tasks": len(s["kept_tasks"]), "target_tasks": len(targets),
                                "auc_sizes": [s["sizes"][0], s["sizes"][-1]], "diverse_subset": result["subset"],
                                "subset_size": len(result["subset"]),
                                "error_bars": f"standard error across {'five' if s['folds'] == 5 else s['folds']} "
                                              "training folds"}
        if others := [len(e["pretrain_tasks"]) for e in arms if e.get("set") == ALL]:
            rows["all_arm_tasks"] = max(others)
        if verdict := subset_verdict(result):
            rows["subset_outcome"], rows["subset_data_fraction"] = verdict
        return rows


def _compared(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The selected set's comparisons with all others under paper 000's protocol (all labels) when it
    ran, else under the first budget split."""
    arms = result.get("arms", ["budget"])
    protocol = "all labels" if "all_labels" in arms else "x".join(map(str, result["splits"][0]))
    return [e for entries in result["targets"].values() for e in entries.values()
            if e.get("set") == name and e.get("protocol") == protocol and "vs_all_others" in e]


def subset_verdict(result: dict[str, Any], name: str = DIVERSE) -> tuple[str, str] | None:
    """Paper 000's two outcome statements, measured: "comparable" when no target's set is worse than all
    others beyond its fold interval; "approximately one third" when the set's mean share of all others'
    labels is within 0.25-0.42."""
    found = _compared(result, name)
    if not found:
        return None
    worse = sum(e["vs_all_others"]["differ"] and e["vs_all_others"]["mean"] < 0 for e in found)
    outcome = ("comparable to pretraining on all other tasks" if not worse else
               f"worse than all other tasks beyond the fold interval for {worse} of {len(found)} targets")
    share = float(np.mean([e["data_fraction"] for e in found]))
    return outcome, "approximately one third" if 0.25 <= share < 0.42 else f"{share:.2f} of the data"


def outcome_lines(result: dict[str, Any]) -> list[str]:
    """One line per set: how it fared against all others under each protocol."""
    lines = []
    for name in [DIVERSE, *result.get("extra", {})]:
        for protocol in dict.fromkeys(e.get("protocol") for entries in result["targets"].values()
                                      for e in entries.values() if e.get("set") == name):
            found = [e["vs_all_others"] for entries in result["targets"].values() for e in entries.values()
                     if e.get("set") == name and e.get("protocol") == protocol and "vs_all_others" in e]
            if found:
                lines.append(f"- {name}, {protocol}: higher gain than all others for "
                             f"{sum(d['mean'] > 0 for d in found)} of {len(found)} targets; beyond the interval "
                             f"better for {sum(d['differ'] and d['mean'] > 0 for d in found)}, worse for "
                             f"{sum(d['differ'] and d['mean'] < 0 for d in found)}.")
    return lines
