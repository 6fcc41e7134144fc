"""The run's report: ``report.json``, per metric a heatmap and a dendrogram, ``summary.md``, and all
of it as one self-contained page, ``index.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import pdist, squareform

from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic
from tasksim_ray.infra.figures import plt, save_figure
from tasksim_ray.infra.html import INDEX, write_html_report
from tasksim_ray.infra.provenance import provenance_table
from tasksim_ray.similarity import METRICS
from tasksim_ray.similarity.select import Selection
from tasksim_ray.stages.similarity import SimilarityResult


def plot_heatmap(names: list[str], m: np.ndarray, subset: list[str], path: Path, title: str) -> None:
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.6 + 0.5 * n))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    mid = (np.nanmax(m) + np.nanmin(m)) / 2
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] < mid else "black")
    for k, name in enumerate(names):
        if name in subset:  # selected tasks: red frame around their column and bold labels
            ax.add_patch(plt.Rectangle((k - 0.5, -0.5), 1, n, fill=False, edgecolor="red", lw=2))
            ax.get_xticklabels()[k].set_fontweight("bold")
            ax.get_yticklabels()[k].set_fontweight("bold")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def task_distances(m: np.ndarray, kind: str) -> np.ndarray:
    """Condensed task distances for clustering: 1 - similarity, the distance itself, or (for
    asymmetric scores) the Euclidean distance between standardised rows."""
    if kind == "similarity":
        d = np.clip(1.0 - (m + m.T) / 2, 0.0, None)
    elif kind == "distance":
        d = np.clip((m + m.T) / 2, 0.0, None)
    else:
        z = (m - m.mean(axis=1, keepdims=True)) / (m.std(axis=1, keepdims=True) + 1e-12)
        return pdist(z)
    np.fill_diagonal(d, 0.0)
    return squareform(d, checks=False)


def plot_dendrogram(names: list[str], m: np.ndarray, kind: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(names), 4))
    dendrogram(linkage(task_distances(m, kind), method="average"), labels=names, ax=ax, leaf_rotation=45)
    ax.set_title(f"{title}\naverage-linkage clustering", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def markdown_summary(report: dict[str, Any]) -> str:
    """The run at a glance, figures first (linked by file name, so the HTML page embeds them in place),
    then the per-task models, the stage timings and the RSA intervals."""
    sel = report["selection"]
    lines = [f"# tasksim report: {report['name']}", "", *(provenance_table(report["run"]) + [""] if "run" in report else []),
             f"Tasks ({len(report['tasks'])}): {', '.join(report['tasks'])}", ""]
    if report["dropped_tasks"]:
        lines += ["Dropped as redundant (|Pearson r| above the threshold with a kept target):", ""]
        lines += [f"- {d['name']}: r = {d['pearson_r']:+.3f} with {d['because_of']}" for d in report["dropped_tasks"]]
        lines.append("")
    lines.append(f"Selected pretraining subset ({report['similarity']['metric']} >= {sel['threshold']}): "
                 f"**{', '.join(sel['subset']) or '(none)'}**")
    if sel["uncoverable"]:
        lines += ["", f"No other task reaches the threshold for: {', '.join(sel['uncoverable'])}"]
    lines += ["", "## Similarity", ""]
    for metric in sorted(report["metrics"], key=lambda m: m != report["similarity"]["metric"]):
        title = report["metrics"][metric]["title"]
        lines += [f"![{title} heatmap]({metric}_heatmap.png) ![{title} dendrogram]({metric}_dendrogram.png)", ""]
    lines += ["## Task models", "", "| task | units | val MAE | epochs | train n |", "|---|---|---|---|---|"]
    for task, m in report["models"].items():
        if "best_val_mae" in m:
            lines.append(f"| {task} | {m['units']} | {m['best_val_mae']:.4g} | {m['epochs_run']} | {m['n_train']} |")
        else:  # a published checkpoint: its own training record
            lines.append(f"| {task} | {m['units']} | published ({m.get('source', '')}) | {m.get('epoch', '')} | |")
    lines += ["", "## Stage timings", "", "| stage | seconds | cached |", "|---|---|---|"]
    lines += [f"| {s} | {t['seconds']:.1f} | {t['cached']} |" for s, t in report["timings"].items()]
    for metric, boot in report.get("intervals", {}).items():
        names, title = report["tasks"], report["metrics"][metric]["title"]
        m = np.array(report["metrics"][metric]["matrix"])
        lines += ["", f"## {title}: intervals", "",
                  f"{title} with {boot['level']:.0%} bootstrap intervals ({boot['n_boot']} probe resamples):", "",
                  f"| pair | {metric} | interval |", "|---|---|---|"]
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                lines.append(f"| {names[i]} / {names[j]} | {m[i, j]:.3f} | "
                             f"[{boot['lower'][i][j]:.3f}, {boot['upper'][i][j]:.3f}] |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any], sim: SimilarityResult, selection: Selection) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "summary": out_dir / "summary.md", "html": out_dir / INDEX}
    for metric, m in sim.matrices.items():
        spec = METRICS[metric]
        subset = selection.subset if metric == report["similarity"]["metric"] else []
        paths[f"{metric}_heatmap"] = out_dir / f"{metric}_heatmap.png"
        paths[f"{metric}_dendrogram"] = out_dir / f"{metric}_dendrogram.png"
        plot_heatmap(sim.names, m, subset, paths[f"{metric}_heatmap"], f"{spec.title} ({report['name']})")
        plot_dendrogram(sim.names, m, spec.kind, paths[f"{metric}_dendrogram"], spec.title)
    write_json_atomic(paths["json"], {**report, "paths": {k: str(v) for k, v in paths.items()}})
    write_text_atomic(paths["summary"], markdown_summary(report))
    write_html_report(out_dir, f"tasksim report: {report['name']}")  # summary.md places the figures
    return paths
