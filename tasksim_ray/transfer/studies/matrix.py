"""The transfer matrix: every target fine-tuned from every other task's model. Its gain matrix, how
well each similarity metric predicts it, and whether the recommendation holds (``tasksim
transfer-matrix``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.infra.cache import read_manifest
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, gain_matrix, similarity_vs_gain
from tasksim_ray.transfer.report import curve_figures, write_recommendation
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


class MatrixStudy(Study):
    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return True

    def plan(self, ctx: Context) -> list[Job]:
        targets = ctx.data.targets
        return [j for t in targets
                for j in curve_jobs(ctx, t, [SCRATCH, *[ctx.from_task(s) for s in targets if s != t]])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        targets, curves = ctx.data.targets, done.curves
        entries = {t: {r: curve_entry(curves, t, r) for r in ["scratch", *targets] if r != t} for t in targets}
        pairs = [(t, s) for t in targets for s in targets if s != t]
        gain = gain_matrix(targets, {(t, s): entries[t][s]["gain_mean"] for t, s in pairs})
        out: dict[str, Any] = {"targets": targets, "gain": gain.tolist(),
                               "gain_se": gain_matrix(targets, {(t, s): entries[t][s]["gain_se"]
                                                                for t, s in pairs}).tolist(),
                               "curves": entries, "similarity_vs_gain": {}}
        sim = ctx.similarity
        assert sim is not None
        for metric, m in sim.matrices.items():
            idx = [sim.names.index(t) for t in targets]
            sub = np.asarray(m)[np.ix_(idx, idx)]
            out["similarity_vs_gain"][metric] = similarity_vs_gain(targets, sub, gain, metric,
                                                                   sim.kinds[metric] != "distance")
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

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        names, gain = result["targets"], np.array(result["gain"], dtype=float)
        figures = curve_figures(out, "matrix", result["curves"], ctx.data.units)
        figures["gain_matrix"] = out / "gain_matrix.png"
        plots.plot_gain_heatmap(figures["gain_matrix"], names, gain, "Transfer gain (%): rows target, columns source")
        md = ["## Gain matrix (relative AUC improvement over scratch, %)", "",
              "| target \\ source | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        md += [f"| {t} | " + " | ".join("-" if np.isnan(v) else f"{100 * v:.1f}" for v in gain[i]) + " |"
               for i, t in enumerate(names)]
        md += ["", "## Similarity vs gain", "",
               "| metric | pairs | Pearson r | Spearman rho | F1 threshold | F1 | confusion [[tn, fp], [fn, tp]] |",
               "|---|---|---|---|---|---|---|"]
        for metric, sg in result["similarity_vs_gain"].items():
            figures[f"sim_vs_gain_{metric}"] = out / f"sim_vs_gain_{metric}.png"
            figures[f"confusion_{metric}"] = out / f"confusion_{metric}.png"
            plots.plot_similarity_vs_gain(figures[f"sim_vs_gain_{metric}"], sg)
            plots.plot_confusion(figures[f"confusion_{metric}"], sg)
            md.append(f"| {metric} | {sg.n_pairs} | {sg.pearson_r:.2f} | {sg.spearman_rho:.2f} | "
                      f"{sg.threshold:.3g} | {sg.f1:.2f} | {sg.confusion} |")
        figures |= write_recommendation(out, result["recommendation"], ctx.run.cfg.name)
        md += ["", f"Does the recommendation hold? See `recommendation.md` (calls from "
                   f"{result['recommendation'].get('chosen')}).", ""]
        return Section(md, figures)
