"""The transfer report: one JSON and one markdown per run of studies, each study's section written by
the study itself (:meth:`Study.render`), and the table and figure helpers the sections share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic
from tasksim_ray.infra.provenance import provenance_table
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import CurveSummary, SimGain

if TYPE_CHECKING:
    from tasksim_ray.config.studies import PaperTableConfig
    from tasksim_ray.transfer.study import Context, Study

_SUMMARY_FIELDS = set(CurveSummary.__dataclass_fields__)


def curve_summary(entry: dict[str, Any]) -> CurveSummary:
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


def curve_figures(out: Path, study: str, per_target: dict[str, dict[str, dict[str, Any]]],
                  units: Callable[[str], str]) -> dict[str, Path]:
    """One learning-curve figure per target (``units``: a task's units)."""
    paths = {}
    for target, curves in per_target.items():
        path = out / f"curves_{study}_{target}.png"
        entries = {label: curve_summary(e) for label, e in curves.items() if isinstance(e, dict) and "auc_mean" in e}
        plots.plot_learning_curves(path, f"{target}: test MAE vs training-set size ({study})", units(target), entries)
        paths[f"curves_{study}_{target}"] = path
    return paths


def curve_table(per_target: dict[str, dict[str, Any]], labels: list[str], first: str = "target") -> list[str]:
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


def relative_bars(per_target: dict[str, dict[str, Any]], targets: list[str],
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


def write_transfer_report(out: Path, results: dict[str, Any], ctx: Context, studies: list[Study],
                          run: dict[str, Any]) -> dict[str, Path]:
    """Each study's section (its tables and figures), one JSON and one markdown headed by the run's
    record (``infra.provenance``); the written paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    tc = ctx.run.cfg.transfer
    md = [f"# Transfer experiments: {ctx.run.cfg.name}", "", *provenance_table(run), ""]
    if any(s.data == "curves" for s in studies):  # learning curves: sizes and folds apply
        md += [f"Sizes {tc.sizes}, {tc.folds} fold(s); AUC = trapezoid of test MAE over training-set size, "
               "normalised by the size range (task units); gain = relative AUC improvement over scratch, mean ± SE "
               "over folds.", ""]
    paths: dict[str, Path] = {}
    for study in studies:
        section = study.render(out, results[study.name], ctx)
        md += section.markdown + beside_papers(study, results[study.name], tc.paper_tables, first=study is studies[0])
        paths |= section.figures
    # one JSON and one summary per run of studies, named by them, so `tasksim moe` does not erase the matrix
    name = "_".join(results)
    paths["json"] = out / f"{name}.json"
    write_json_atomic(paths["json"], _jsonable(results))
    paths["markdown"] = out / f"{name}.md"
    write_text_atomic(paths["markdown"], "\n".join(md))
    return paths


def beside_papers(study: Study, result: dict[str, Any], refs: list[PaperTableConfig], first: bool) -> list[str]:
    """Each of ``refs`` (``transfer.paper_tables``) that names this study (or none, for the first): the
    paper's numbers beside ours, cell by cell (markdown), also kept in the study's JSON (``paper_comparison``)."""
    from tasksim_ray.papers import side_by_side

    md: list[str] = []
    for ref in refs:
        if ref.study != study.name and not (ref.study is None and first):
            continue
        rows = study.paper_rows(result)
        assert rows is not None  # make_studies refused the config otherwise
        side = side_by_side(ref.table, rows, ref.aliases or None, ref.methods or None)
        result.setdefault("paper_comparison", {})[ref.table] = side.data
        md += [f"## Beside the paper: {ref.table}", "", side.markdown, ""]
    return md


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
