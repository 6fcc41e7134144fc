"""The transfer matrix: every target fine-tuned from every other task's model. Its gain matrix, how
well each similarity metric predicts it, and whether the recommendation holds (``tasksim
transfer-matrix``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.infra.cache import read_manifest
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import SimGain, fold_gains, gain_matrix, similarity_vs_gain
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
        targets, curves, tc = ctx.data.targets, done.curves, ctx.run.cfg.transfer
        entries = {t: {r: curve_entry(curves, t, r) for r in ["scratch", *targets] if r != t} for t in targets}
        pairs = [(t, s) for t in targets for s in targets if s != t]
        gain = gain_matrix(targets, {(t, s): entries[t][s]["gain_mean"] for t, s in pairs})
        out: dict[str, Any] = {"targets": targets, "gain": gain.tolist(),
                               "gain_se": gain_matrix(targets, {(t, s): entries[t][s]["gain_se"]
                                                                for t, s in pairs}).tolist(),
                               "curves": entries, "similarity_vs_gain": {}, "fixed_threshold": {},
                               "setting": {"folds": tc.folds, "sizes": list(tc.sizes),
                                           "gain_threshold": tc.matrix.gain_threshold}}
        sim = ctx.similarity
        assert sim is not None
        for metric, m in sim.matrices.items():
            idx = [sim.names.index(t) for t in targets]
            sub = np.asarray(m)[np.ix_(idx, idx)]
            out["similarity_vs_gain"][metric] = sg = similarity_vs_gain(targets, sub, gain, metric,
                                                                        sim.kinds[metric] != "distance")
            if metric in tc.matrix.fixed_thresholds:
                out["fixed_threshold"][metric] = at_threshold(sg, tc.matrix.fixed_thresholds[metric],
                                                              tc.matrix.gain_threshold, sim.kinds[metric] != "distance")
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
        md += fixed_lines(out, result, figures)
        figures |= write_recommendation(out, result["recommendation"], ctx.run.cfg.name)
        md += ["", f"Does the recommendation hold? See `recommendation.md` (calls from "
                   f"{result['recommendation'].get('chosen')}).", ""]
        return Section(md, figures)

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        """Paper 000's Fig. 1a/1b setting and outcome (``000/facts``) as this run measured them: the
        fixed thresholds, and the similarity-gain correlation of the metric with a fixed threshold
        (RSA by default) read as the paper words it ("weak but positive": 0 < Pearson r < 0.5)."""
        s, fixed = result["setting"], result.get("fixed_threshold", {})
        rows: dict[str, Any] = {"folds": s["folds"], "auc_sizes": [s["sizes"][0], s["sizes"][-1]],
                                "gain_threshold": s["gain_threshold"]}
        if fixed:
            metric = "rsa" if "rsa" in fixed else next(iter(fixed))
            rows["similarity_threshold"] = fixed[metric]["threshold"]
            r = result["similarity_vs_gain"][metric].pearson_r if isinstance(
                result["similarity_vs_gain"][metric], SimGain) else result["similarity_vs_gain"][metric]["pearson_r"]
            rows["similarity_gain_correlation"] = (
                "not defined" if r is None or not np.isfinite(r) else "weak but positive" if 0 < r < 0.5
                else f"{'positive' if r > 0 else 'negative'} (Pearson r {r:.2f}, {metric})")
        return rows


def at_threshold(sg: SimGain, threshold: float, gain_threshold: float, higher_is_similar: bool) -> dict[str, Any]:
    """The confusion matrix [[tn, fp], [fn, tp]] and F1 of "similar" (at least ``threshold``, or at
    most for a distance) as a call of "improved" (gain above ``gain_threshold`` %), over the pairs."""
    sim = np.array([p["similarity"] for p in sg.pairs])
    improved = 100 * np.array([p["gain"] for p in sg.pairs]) > gain_threshold
    called = sim >= threshold if higher_is_similar else sim <= threshold
    tp, fp = int((called & improved).sum()), int((called & ~improved).sum())
    fn, tn = int((~called & improved).sum()), int((~called & ~improved).sum())
    return {"threshold": threshold, "gain_threshold": gain_threshold, "n_pairs": len(sim),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0, "confusion": [[tn, fp], [fn, tp]]}


def fixed_lines(out: Path, result: dict[str, Any], figures: dict[str, Path]) -> list[str]:
    """The fixed-threshold view beside the F1-maximising one, with its confusion figure."""
    fixed = result.get("fixed_threshold", {})
    if not fixed:
        return []
    md = ["", "At fixed thresholds (`transfer.matrix.fixed_thresholds`; paper 000 Fig. 1b: RSA 0.6, gain 0%), beside "
              "the F1-maximising threshold above:", "",
          "| metric | threshold | improved: gain above (%) | F1 | precision | recall "
          "| confusion [[tn, fp], [fn, tp]] |",
          "|---|---|---|---|---|---|---|"]
    for metric, f in fixed.items():
        sg = result["similarity_vs_gain"][metric]
        if isinstance(sg, SimGain):
            figures[f"confusion_fixed_{metric}"] = path = out / f"confusion_fixed_{metric}.png"
            plots.plot_confusion(path, replace(sg, threshold=f["threshold"], f1=f["f1"], precision=f["precision"],
                                               recall=f["recall"], confusion=f["confusion"]))
        md.append(f"| {metric} | {f['threshold']:.3g} | {f['gain_threshold']:.3g} | {f['f1']:.2f} | "
                  f"{f['precision']:.2f} | {f['recall']:.2f} | {f['confusion']} |")
    return md
