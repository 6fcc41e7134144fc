"""The run's report: ``report.json``, a heatmap PNG with the selected subset marked, and a summary."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasksim_ray.cache import write_json_atomic  # noqa: E402
from tasksim_ray.select import Selection  # noqa: E402


def plot_heatmap(names: list[str], sim: np.ndarray, subset: list[str], path: Path, title: str) -> None:
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.6 + 0.5 * n))
    im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if sim[i, j] < 0.6 else "black")
    for k, name in enumerate(names):
        if name in subset:  # selected tasks: red frame around their column and bold labels
            ax.add_patch(plt.Rectangle((k - 0.5, -0.5), 1, n, fill=False, edgecolor="red", lw=2))
            ax.get_xticklabels()[k].set_fontweight("bold")
            ax.get_yticklabels()[k].set_fontweight("bold")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def markdown_summary(report: dict[str, Any]) -> str:
    sel = report["selection"]
    lines = [f"# tasksim report: {report['name']}", "",
             f"Tasks ({len(report['tasks'])}): {', '.join(report['tasks'])}", ""]
    if report["dropped_tasks"]:
        lines += ["Dropped as redundant (|Pearson r| above the threshold with a kept target):", ""]
        lines += [f"- {d['name']}: r = {d['pearson_r']:+.3f} with {d['because_of']}" for d in report["dropped_tasks"]]
        lines.append("")
    lines += [f"Selected pretraining subset (RSA >= {sel['threshold']}): **{', '.join(sel['subset']) or '(none)'}**"]
    if sel["uncoverable"]:
        lines.append(f"No other task reaches the threshold for: {', '.join(sel['uncoverable'])}")
    lines += ["", "| task | units | val MAE | epochs | train n |", "|---|---|---|---|---|"]
    for task, m in report["models"].items():
        lines.append(f"| {task} | {m['units']} | {m['best_val_mae']:.4g} | {m['epochs_run']} | {m['n_train']} |")
    lines += ["", "| stage | seconds | cached |", "|---|---|---|"]
    lines += [f"| {s} | {t['seconds']:.1f} | {t['cached']} |" for s, t in report["timings"].items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any], names: list[str], sim: np.ndarray,
                 selection: Selection) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**report, "selection": asdict(selection)}
    paths = {"json": out_dir / "report.json", "heatmap": out_dir / "similarity_heatmap.png",
             "summary": out_dir / "summary.md"}
    plot_heatmap(names, sim, selection.subset, paths["heatmap"], f"RSA task similarity ({report['name']})")
    write_json_atomic(paths["json"], report)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(markdown_summary(report))
    os.replace(tmp, paths["summary"])
    return paths
