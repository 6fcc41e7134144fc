"""The transfer report: ``transfer.json``, ``transfer.md`` and the figures of each study."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import CurveSummary, SimGain
from tasksim_ray.transfer.ptft_study import ptft_markdown

if TYPE_CHECKING:
    from tasksim_ray.transfer.study import Context

_SUMMARY_FIELDS = set(CurveSummary.__dataclass_fields__)


def _summary(entry: dict[str, Any]) -> CurveSummary:
    return CurveSummary(**{k: v for k, v in entry.items() if k in _SUMMARY_FIELDS})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, SimGain):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


def _fmt(mean: float | None, se: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}g} ± {se * scale:.2g}" if se is not None else f"{mean * scale:.{digits}g}"


def _curve_figures(out: Path, study: str, per_target: dict[str, dict[str, dict[str, Any]]],
                   units: dict[str, str]) -> dict[str, Path]:
    paths = {}
    for target, curves in per_target.items():
        path = out / f"curves_{study}_{target}.png"
        entries = {label: _summary(e) for label, e in curves.items() if isinstance(e, dict) and "auc_mean" in e}
        plots.plot_learning_curves(path, f"{target}: test MAE vs training-set size ({study})", units[target], entries)
        paths[f"curves_{study}_{target}"] = path
    return paths


def _table(per_target: dict[str, dict[str, Any]], labels: list[str], first: str = "target") -> list[str]:
    lines = [f"| {first} | " + " | ".join(f"{lbl} (norm. AUC)" for lbl in labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for t, entries in per_target.items():
        cells = []
        for lbl in labels:
            e = entries.get(lbl)
            one = bool(e) and e.get("n_folds") == 1  # one fold: no spread to report
            cell = _fmt(e["auc_norm_mean"], None if one else e["auc_norm_se"]) if e else "-"
            if e and "gain_mean" in e:
                cell += f" (gain {_fmt(e['gain_mean'], None if one else e['gain_se'], 100, 2)}%)"
            cells.append(cell)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _relative_bars(per_target: dict[str, dict[str, Any]], targets: list[str],
                   labels: list[str]) -> dict[str, tuple[list[float], list[float]]]:
    """AUC / scratch AUC per target (1 - gain, fold SE), so tasks in different units share one axis."""
    bars = {}
    for lbl in labels:
        means, ses = [], []
        for t in targets:
            e = per_target[t].get(lbl)
            if e is None:
                means.append(np.nan)
                ses.append(0.0)
            elif lbl == "scratch":
                means.append(1.0)
                ses.append(e["auc_se"] / e["auc_mean"])
            else:
                means.append(1.0 - e["gain_mean"])
                ses.append(e["gain_se"])
        bars[lbl] = (means, ses)
    return bars


def _methods(out: Path, r: dict[str, Any], ctx: Context, paths: dict[str, Path]) -> list[str]:
    """Test MAE mean ± std over split seeds per task and method, wins, cost, gates."""
    tc = ctx.run.cfg.transfer
    each = [m for m in r["methods"] if m.startswith("from ")]  # one column for all per-source fine-tuning
    methods = [m for m in r["methods"] if m not in each]
    md = ["## Methods (whole training split per split seed)", "",
          f"Test MAE (task units), mean ± std over split seeds {r['seeds']} ({ctx.run.cfg.data.split.kind} "
          "splits); sources: " + (f"foundation {', '.join(tc.foundation)}" if tc.foundation else
                                  f"{tc.sources.kind} {Path(tc.sources.path or '').name}")
          + (f"; MoE top-{tc.moe.k}, penalty {tc.moe.penalty} on {tc.moe.penalty_on}, expert last layer "
             f"{'trainable' if tc.moe.train_last else 'frozen'}" if "moe" in tc.methods else "") + ".", "",
          "| task | units | train/val/test | " + " | ".join(methods + (["best single source"] if each else []))
          + " | best |", "|---|---|---|" + "---|" * (len(methods) + bool(each)) + "---|"]
    for t, e in r["targets"].items():
        cells = [f"{e[m]['mean']:.4g} ± {e[m]['std']:.2g}" for m in methods]
        if each:
            top = min(each, key=lambda m: e[m]["mean"])
            cells.append(f"{top.removeprefix('from ')}: {e[top]['mean']:.4g} ± {e[top]['std']:.2g}")
        md.append(f"| {t} | {e['units']} | {'/'.join(map(str, e['n']))} | " + " | ".join(cells) + f" | {e['best']} |")
    md += ["", "Wins: " + ", ".join(f"{m} {n}" for m, n in r["wins"].items() if n or m in methods), "",
           "| method | cells | mean epochs | mean s/epoch | mean s/cell |", "|---|---|---|---|---|"]
    md += [f"| {m} | {c['cells']} | {c['epochs']:.0f} | {c['s_per_epoch']:.4f} | {c['s_per_cell']:.1f} |"
           for m, c in r["cost"].items() if m in methods]
    if each:
        cost = [r["cost"][m] for m in each]
        md.append(f"| each source ({len(each)}) | {sum(c['cells'] for c in cost)} | "
                  f"{np.mean([c['epochs'] for c in cost]):.0f} | {np.mean([c['s_per_epoch'] for c in cost]):.4f} | "
                  f"{np.mean([c['s_per_cell'] for c in cost]):.1f} |")
    if "recommendation" in r:
        paths |= write_recommendation(out, r["recommendation"], ctx.run.cfg.name)
        md += ["", f"Does the recommendation hold? See `recommendation.md` (calls from {r['recommendation']['chosen']})."]
    gated = {t: e["gates"] for t, e in r["targets"].items() if "gates" in e}
    if gated:
        experts = list(next(iter(gated.values())))
        paths["methods_gates"] = out / "methods_gates.png"
        plots.plot_gate_heatmap(paths["methods_gates"], list(gated), experts,
                                np.array([[g[x] for x in experts] for g in gated.values()]),
                                "MoE gate weights (mean over split seeds)")
        md += ["", "| task | gates (mean over seeds) |", "|---|---|"]
        md += [f"| {t} | " + ", ".join(f"{k} {v:.2f}" for k, v in g.items() if v > 0) + " |" for t, g in gated.items()]
    if "depth_profile" in r or any("drift" in e[m] for e in r["targets"].values() for m in methods):
        md += ["", *_finetuning(out, r, paths)]
    return [*md, ""]


def _finetuning(out: Path, r: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    """Per task: test MAE per split seed, mean ± SE and the improvement over scratch per recipe; the
    fine-tuned cells' per-layer weight drift and the pretrained model's depth profile (figures + tables)."""
    seeds, methods = r["seeds"], r["methods"]
    md = ["## Recipes per fold against random initialisation", "",
          "Test MAE per split seed, mean ± SE over seeds; improvement = (scratch - recipe) / scratch MAE (%), "
          "paired by seed, mean ± SE.", ""]
    for t, e in r["targets"].items():
        md += [f"### {t} ({e['units']}; train/val/test {'/'.join(map(str, e['n']))})", "",
               "| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SE | improvement (%) |",
               "|---" * (len(seeds) + 3) + "|"]
        for m in methods:
            x = e[m]
            gain = f"{x['gain_mean']:.1f} ± {x['gain_se']:.1f}" if "gain_mean" in x else "-"
            md.append(f"| {m} | " + " | ".join(f"{v:.4g}" for v in x["values"])
                      + f" | {x['mean']:.4g} ± {x['se']:.2g} | {gain} |")
        md.append("")
    drift = {t: {m: e[m]["drift"] for m in methods if "drift" in e[m]} for t, e in r["targets"].items()}
    drift = {t: d for t, d in drift.items() if d}
    if drift:
        groups = list(next(iter(next(iter(drift.values())).values())))
        paths["layer_drift"] = out / "layer_drift.png"
        plots.plot_layer_drift(paths["layer_drift"], groups, {t: {m: list(g.values()) for m, g in d.items()}
                                                              for t, d in drift.items()},
                               "Weight drift from the pretrained weights per layer group (mean over seeds)")
        md += ["### Weight drift ||w - w0|| / ||w0|| per encoder layer group (mean over seeds)", ""]
        for t, d in drift.items():
            md += [f"| {t}: group | " + " | ".join(d) + " |", "|---" * (len(d) + 1) + "|"]
            md += [f"| {g} | " + " | ".join(f"{x[g]:.3g}" for x in d.values()) + " |" for g in groups]
            md.append("")
    prof = r.get("depth_profile")
    for name, per_task in (prof or {}).get("models", {}).items():
        paths[f"depth_profile_{name}"] = out / f"depth_profile_{name}.png"
        plots.plot_depth_profile(paths[f"depth_profile_{name}"], prof["layers"],
                                 {t: (x["mean"], x["se"]) for t, x in per_task.items()},
                                 f"{name} (pretrained): LogME of each layer's pooled features\n"
                                 "on each fold's training labels")
        md += [f"### Depth profile: {name} (pretrained), LogME per sample of each layer's mean-pooled features on "
               f"the training labels, mean ± SE over seeds ({prof['seconds']:.0f} s)", "",
               "| layer | " + " | ".join(per_task) + " |", "|---" * (len(per_task) + 1) + "|"]
        md += [f"| {layer} | " + " | ".join(f"{x['mean'][i]:.3f} ± {x['se'][i]:.2g}" for x in per_task.values()) + " |"
               for i, layer in enumerate(prof["layers"])]
        md.append("")
    return md


def _budget(out: Path, r: dict[str, Any], ctx: Context, paths: dict[str, Path]) -> list[str]:
    """The budget study: single sources under one budget, the pick metric's choice vs all others."""
    n, e = r["split"]
    paths["budget_gain"] = out / "budget_gain_matrix.png"
    plots.plot_gain_heatmap(paths["budget_gain"], r["names"], np.array(r["gain"], dtype=float),
                            f"Gain (%) from each source alone, budget {n} x {e}")
    rec = write_recommendation(out, r["recommendation"], f"{ctx.run.cfg.name}, single sources under one budget",
                               "budget_recommendation")
    paths |= {f"budget_{k}": v for k, v in rec.items()}
    md = ["## Budget study: one source alone vs the same budget over all", "",
          f"Budget {n} samples per epoch x {e} epochs = {n * e} samples for every pretraining. Picked: the source "
          f"ranked first by **{r['pick_metric']}**. Gain: relative AUC improvement over scratch (%), mean over "
          "folds; picked minus all others paired by fold, mean [95% t interval]. Every metric as a recommender of "
          "the single source: `budget_recommendation.md`.", "",
          "| target | picked | its gain | measured best (gain) | all others' gain | picked - all others | beyond? |",
          "|---|---|---|---|---|---|---|"]
    for t, x in r["targets"].items():
        d = x["picked_vs_all_others"]
        md.append(f"| {t} | {x['picked']} | {x['picked_gain']:.1f} | {x['measured_best']} ({x['best_gain']:.1f}) | "
                  f"{x['all_others_gain']:.1f} | {d['mean']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}] | "
                  f"{'yes' if d['differ'] else 'no'} |")
    md += ["", f"The picked source alone beats all others under the same budget for {r['picked_beats_all_others']} "
               f"of {len(r['targets'])} targets; it is the measured best single source for {r['picked_is_best']}.", ""]
    return md


def write_transfer_report(out: Path, results: dict[str, Any], ctx: Context) -> dict[str, Path]:
    """Figures and tables for whichever studies ran; returns the written paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    units = {t: ctx.data.units(t) for t in ctx.data.sources}
    paths: dict[str, Path] = {}
    intro = [f"# Transfer experiments: {ctx.run.cfg.name}", "",
             f"Sizes {ctx.run.cfg.transfer.sizes}, {ctx.run.cfg.transfer.folds} fold(s); AUC = trapezoid of test MAE "
             "over training-set size, normalised by the size range (task units); gain = relative AUC improvement "
             "over scratch, mean ± SE over folds.", ""]
    if list(results) == ["methods"]:  # no learning curves: sizes and folds do not apply
        intro = intro[:2]
    md: list[str] = []
    if "curves" in results:
        r = results["curves"]
        paths |= _curve_figures(out, "curves", {r["target"]: r["curves"]}, units)
        md += ["## Learning curves", "", *_table({r["target"]: r["curves"]}, list(r["curves"])), ""]
    if "matrix" in results:
        r = results["matrix"]
        names, gain = r["targets"], np.array(r["gain"], dtype=float)
        paths |= _curve_figures(out, "matrix", r["curves"], units)
        paths["gain_matrix"] = out / "gain_matrix.png"
        plots.plot_gain_heatmap(paths["gain_matrix"], names, gain, "Transfer gain (%): rows target, columns source")
        md += ["## Gain matrix (relative AUC improvement over scratch, %)", "",
               "| target \\ source | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        md += [f"| {t} | " + " | ".join("-" if np.isnan(v) else f"{100 * v:.1f}" for v in gain[i]) + " |"
               for i, t in enumerate(names)]
        md += ["", "## Similarity vs gain", "",
               "| metric | pairs | Pearson r | Spearman rho | F1 threshold | F1 | confusion [[tn, fp], [fn, tp]] |",
               "|---|---|---|---|---|---|---|"]
        for metric, sg in r["similarity_vs_gain"].items():
            paths[f"sim_vs_gain_{metric}"] = out / f"sim_vs_gain_{metric}.png"
            paths[f"confusion_{metric}"] = out / f"confusion_{metric}.png"
            plots.plot_similarity_vs_gain(paths[f"sim_vs_gain_{metric}"], sg)
            plots.plot_confusion(paths[f"confusion_{metric}"], sg)
            md.append(f"| {metric} | {sg.n_pairs} | {sg.pearson_r:.2f} | {sg.spearman_rho:.2f} | "
                      f"{sg.threshold:.3g} | {sg.f1:.2f} | {sg.confusion} |")
        md.append("")
        if "recommendation" in r:
            paths |= write_recommendation(out, r["recommendation"], ctx.run.cfg.name)
            chosen = r["recommendation"].get("chosen")
            md += [f"Does the recommendation hold? See `recommendation.md` (calls from {chosen}).", ""]
    if "subset" in results:
        r = results["subset"]
        targets = list(r["targets"])
        labels = list(dict.fromkeys(lbl for e in r["targets"].values() for lbl in e))
        paths["subset_bars"] = out / "subset_study.png"
        plots.plot_subset_bars(paths["subset_bars"], targets, _relative_bars(r["targets"], targets, labels),
                               "AUC relative to scratch (lower is better)",
                               f"Diverse subset {r['subset']} vs all other tasks vs scratch", reference=1.0)
        paths |= _curve_figures(out, "subset", r["targets"], units)
        md += ["## Subset study", "", f"Diverse subset: {', '.join(r['subset']) or '(none)'}; budget splits "
               f"(samples x epochs): {r['splits']}.", "", *_table(r["targets"], labels), "",
               "| target | arm | pretraining tasks | labels used / available |", "|---|---|---|---|"]
        md += [f"| {t} | {lbl} | {', '.join(e['pretrain_tasks'])} | {e['labels_used']} / {e['labels_available']} |"
               for t, entries in r["targets"].items() for lbl, e in entries.items() if "pretrain_tasks" in e]
        md += ["", "Diverse subset minus all others, gain points per fold (paired), mean [95% t interval]:", "",
               "| target | budget | difference | beyond the interval? |", "|---|---|---|---|"]
        md += [f"| {t} | {lbl.removeprefix('diverse subset ')} | {d['mean']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}] | "
               f"{'yes' if d['differ'] else 'no'} |" for t, entries in r["targets"].items()
               for lbl, e in entries.items() if (d := e.get("vs_all_others"))]
        md.append("")
    if "moe" in results:
        r = results["moe"]
        paths["moe_gates"] = out / "moe_gates.png"
        plots.plot_gate_heatmap(paths["moe_gates"], list(r["targets"]), r["experts"], np.array(r["gate_matrix"]),
                                f"MoE gate weights (top-{r['k']}, init {r['init']}, largest training size)")
        paths |= _curve_figures(out, "moe", {t: {k: v for k, v in e.items() if k != "gates"}
                                             for t, e in r["targets"].items()}, units)
        md += ["## Mixture of experts", "", *_table(r["targets"], ["scratch", "moe"]), "",
               "| target | gates (largest size, mean over folds) |", "|---|---|"]
        md += [f"| {t} | " + ", ".join(f"{k} {v:.2f}" for k, v in e["gates"].items() if v > 0) + " |"
               for t, e in r["targets"].items()]
        md.append("")
    if "strategies" in results:
        r = results["strategies"]
        names = list(r["variants"])
        pairs = {f"{p['source']}→{p['target']}": {"scratch": p["scratch"], **p["variants"]} for p in r["pairs"]}
        paths["strategy_bars"] = out / "strategies.png"
        plots.plot_subset_bars(paths["strategy_bars"], list(pairs), _relative_bars(pairs, list(pairs),
                                                                                   ["scratch", *names]),
                               "AUC relative to scratch (lower is better)", "Fine-tuning variants (source→target)",
                               reference=1.0)
        for p in r["pairs"]:
            key = f"curves_strategies_{p['source']}_to_{p['target']}"
            paths[key] = out / f"{key}.png"
            plots.plot_learning_curves(paths[key], f"{p['target']} from {p['source']}: fine-tuning variants",
                                       units[p["target"]], {"scratch": _summary(p["scratch"]),
                                                            **{n: _summary(e) for n, e in p["variants"].items()}})
        md += ["## Fine-tuning variants", "", *_table(pairs, ["scratch", *names], "source→target"), ""]
    if "methods" in results:
        md += _methods(out, results["methods"], ctx, paths)
    if "budget" in results:
        md += _budget(out, results["budget"], ctx, paths)
    if "ptft" in results:
        r = results["ptft"]
        md += ptft_markdown(out, r, paths)
        paths |= _curve_figures(out, "ptft", {t: {k: e["curves"][k] for k in ("scratch", e["best_pairwise"], r["mpt"])}
                                              for t, e in r["per_target"].items()}, units)
    # one JSON and one summary per run of studies, named by them, so `tasksim moe` does not erase the matrix
    name = "_".join(results)
    paths["json"] = out / f"{name}.json"
    write_json_atomic(paths["json"], _jsonable(results))
    paths["markdown"] = out / f"{name}.md"
    write_text_atomic(paths["markdown"], "\n".join(intro + md))
    return paths


def write_recommendation(out: Path, rec: dict[str, Any], title: str, stem: str = "recommendation") -> dict[str, Path]:
    """``<stem>.{json,md,png}``: each recommender and the baselines, the call per target,
    "don't pretrain", the negative-transfer call and what the recommendation cost."""
    paths = {f"recommendation_{ext}": out / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    write_json_atomic(paths["recommendation_json"], _jsonable(rec))
    rows = {m: (v["summary"], v["interval"]) for m, v in rec["recommenders"].items()}
    rows |= {name: (summary, {}) for name, summary in rec["baselines"].items()}
    keys = {"top1": "top-1 hit", "top3": "top-3 hit", "regret": "regret (gain points)", "spearman": "Spearman"}
    plots.plot_recommenders(paths["recommendation_png"], list(rows), {
        label: [(s.get(k, np.nan), *iv.get(k, (np.nan, np.nan))) for s, iv in rows.values()]
        for k, label in keys.items()}, f"Does the recommendation hold? {title}")
    md = [f"# Does the recommendation hold? {title}", "",
          f"Gain: {rec['gain']}. Top-1 / top-3: the measured best source is the recommended one / among the top 3. "
          "Regret: gain of the best source minus gain of the recommended one (gain points). Kendall / Spearman: "
          "score vs gain over a target's sources, averaged over targets. Intervals: 95% over resamples of the "
          f"folds (split seeds). `combined`: ridge regression of gain on {', '.join(rec['features'])}, fitted "
          "leave-one-target-out (a target's own gains never inform its recommendation). Baselines: a random "
          "source (expected), the source with most training labels when known (ties broken at random), the "
          "oracle.", "",
          "| recommender | top-1 | top-3 | regret | Kendall tau | Spearman |", "|---|---|---|---|---|---|"]
    for name, (summary, interval) in rows.items():
        md.append(f"| {name} | " + " | ".join(_with_interval(summary, interval, k) for k in
                                              ("top1", "top3", "regret", "kendall", "spearman")) + " |")
    if rec.get("chosen"):
        md += ["", f"Best single metric (lowest regret): **{rec['best_single']}**. The combined score is "
                   f"{'kept: it has lower regret' if rec['combined_kept'] else 'not kept: it does not beat it'}; "
                   f"the calls below use **{rec['chosen']}**."]
    if "targets" in rec:
        nt = rec["negative_transfer"]
        md += ["", "Per target: the top-ranked source and the top 3, the top source's measured gain against the best "
                   "source's, the highest predicted gain (leave-one-target-out) with its 95% interval over fold "
                   "resamples, and the call: pretrain on the top source, or scratch when no source is predicted to "
                   "help.", "",
               "| target | top-ranked source | top 3 | its gain | measured best (gain) | regret | "
               "highest predicted gain [95%] | call |", "|---|---|---|---|---|---|---|---|"]
        for t, e in rec["targets"].items():
            lo, hi = e["best_predicted_interval"]
            md.append(f"| {t} | {e['recommended']} | {', '.join(e['top3'])} | {e['recommended_gain']:.1f} | "
                      f"{e['measured_best']} ({e['measured_best_gain']:.1f}) | {e['regret']:.1f} | "
                      f"{e['best_predicted_gain']:.1f} [{lo:.1f}, {hi:.1f}] ({e['best_predicted']}) | "
                      f"{e['call'] if e['call'] == 'scratch' else 'pretrain on ' + e['recommended']} |")
        md += ["", f"Don't pretrain (no source predicted to help; scratch recommended): "
                   f"{', '.join(rec['dont_pretrain']) or 'none'}. Measured, every source hurt: "
                   f"{', '.join(rec['every_source_hurts']) or 'none'}. Negative-transfer call (predicted gain < 0) "
                   f"against measured gain < 0: precision {nt['precision']:.2f}, recall {nt['recall']:.2f}."]
    if "cost" in rec:
        c = rec["cost"]
        shared = f"; both need the per-task models ({c['task_models_s']:.0f} s)" if c["task_models_s"] else ""
        md += ["", f"Cost (measured compute seconds): the similarities {c['similarity_s']:.1f} s against the "
                   f"brute-force transfer matrix {c['transfer_matrix_s']:.0f} s ({c['transfer_matrix_cells']} "
                   f"cells), {c['transfer_matrix_s'] / c['similarity_s']:.0f}x{shared}."]
    write_text_atomic(paths["recommendation_md"], "\n".join(md + [""]))
    return paths


def _with_interval(summary: dict[str, float], interval: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    text = "-" if value is None or not np.isfinite(value) else f"{value:.2f}"
    lo, hi = interval.get(key, (None, None))
    return text if lo is None or not np.isfinite(lo) else f"{text} [{lo:.2f}, {hi:.2f}]"
