"""Figures for the transfer study: learning curves, gain heatmaps, similarity-vs-gain and MoE gates.

Each function writes one PNG through ``figures.save_figure`` (temp file + rename), so a crashed run never
leaves half a figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator

from tasksim_ray.infra.figures import plt, save_figure
from tasksim_ray.transfer.analysis import CurveSummary, SimGain

MAX_POINT_LABELS = 30  # beyond this, per-point labels overlap into noise


def plot_learning_curves(path: Path, title: str, units: str, curves: dict[str, CurveSummary]) -> None:
    """MAE vs training-set size on log-log axes (power-law curves look straight), scratch first as the baseline."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    order = sorted(curves, key=lambda label: label != "scratch")  # stable: scratch first, others as given
    for label in order:
        c = curves[label]
        ax.errorbar(c.sizes, c.mae_mean, yerr=c.mae_se, marker="o", ms=4, capsize=3,
                    label=f"{label} (norm. AUC {c.auc_norm_mean:.3g} ± {c.auc_norm_se:.2g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({s for c in curves.values() for s in c.sizes})
    ax.set_xticks(sizes, [str(s) for s in sizes])  # the measured sizes, not powers of ten
    ax.set_xticks([], minor=True)
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # MAE ranges are often under a decade: label 2x and 5x too
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training-set size")
    ax.set_ylabel(f"test MAE ({units})")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_gain_heatmap(path: Path, names: list[str], gain: np.ndarray, title: str, targets: list[str] | None = None,
                      label: str = "AUC gain over scratch (%)") -> None:
    """Relative gain in percent, rows targets (``targets``, default ``names``) and columns sources (``names``), on
    a diverging map centred on 0 so helping and hurting pairs read at a glance; unmeasured (NaN) cells stay blank."""
    pct = 100.0 * np.asarray(gain, dtype=float)
    rows = targets or names
    vmax = float(np.nanmax(np.abs(pct))) if np.isfinite(pct).any() else 0.0
    vmax = vmax or 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.55 * len(names)), max(3.5, 1.0 + 0.5 * len(rows))))
    im = ax.imshow(pct, cmap=plt.get_cmap("RdBu").with_extremes(bad="white"), vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("source (pretrained on)")
    ax.set_ylabel("target (fine-tuned on)")
    for i, j in zip(*np.nonzero(np.isfinite(pct)), strict=True):  # NaN cells stay blank, no text
        ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if abs(pct[i, j]) > 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_similarity_vs_gain(path: Path, result: SimGain) -> None:
    """Each (target, source) pair as a point; the F1 threshold line shows how much of the helpful region it captures."""
    x = np.array([p["similarity"] for p in result.pairs])
    y = 100.0 * np.array([p["gain"] for p in result.pairs])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(x, y, c=np.where(y > 0, "tab:blue", "tab:red"), s=20)
    if len(result.pairs) <= MAX_POINT_LABELS:
        for p, xi, yi in zip(result.pairs, x, y, strict=True):
            ax.annotate(f"{p['source']}→{p['target']}", (xi, yi), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(0.0, color="gray", lw=1)
    ax.axvline(result.threshold, color="black", ls="--", lw=1, label=f"F1 threshold {result.threshold:.3g}")
    ax.set_xlabel(result.metric)
    ax.set_ylabel("AUC gain over scratch (%)")
    ax.set_title(f"{result.metric}: r={result.pearson_r:.2f}, ρ={result.spearman_rho:.2f}, F1={result.f1:.2f} "
                 f"(n={result.n_pairs})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(path: Path, result: SimGain) -> None:
    """Counts at the F1 threshold: rows actual gain <= 0 / > 0, columns predicted not-similar / similar."""
    cm = np.asarray(result.confusion)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues", vmin=0)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=12,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], ["not similar", "similar"])
    ax.set_yticks([0, 1], ["gain ≤ 0", "gain > 0"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{result.metric}: threshold {result.threshold:.3g}\nF1={result.f1:.2f}, "
                 f"P={result.precision:.2f}, R={result.recall:.2f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_subset_bars(path: Path, targets: list[str], bars: dict[str, tuple[list[float], list[float]]],
                     ylabel: str, title: str, reference: float | None = None) -> None:
    """One group per target, one bar per label (mean with fold-SE error bars), to compare source sets side by side.

    With ``reference`` (1.0 for AUC relative to scratch) a dashed line marks it and the axis zooms to the bars,
    since the differences that matter are a few percent."""
    for label, (means, ses) in bars.items():
        if len(means) != len(targets) or len(ses) != len(targets):
            raise ValueError(f"bar {label!r} needs {len(targets)} means and SEs, got {len(means)} and {len(ses)}")
    width = 0.8 / max(len(bars), 1)
    xs = np.arange(len(targets))
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(targets), 4))
    for k, (label, (means, ses)) in enumerate(bars.items()):
        ax.bar(xs + (k - (len(bars) - 1) / 2) * width, means, width, yerr=ses, capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=0.8)
        lo = np.nanmin([m - e for means, ses in bars.values() for m, e in zip(means, ses)] + [reference])
        hi = np.nanmax([m + e for means, ses in bars.values() for m, e in zip(means, ses)] + [reference])
        pad = 0.1 * (hi - lo) or 0.05
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(xs, targets, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_gate_heatmap(path: Path, targets: list[str], experts: list[str], weights: np.ndarray, title: str) -> None:
    """Mixture-of-experts gate weights per target; zero weights are blank with a '·' so unused experts stand out."""
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(targets), len(experts)):
        raise ValueError(f"weights must be ({len(targets)}, {len(experts)}), got {w.shape}")
    shown = np.where(w == 0, np.nan, w)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.55 * len(experts)), max(3.0, 1.0 + 0.5 * len(targets))))
    im = ax.imshow(shown, cmap=plt.get_cmap("viridis").with_extremes(bad="white"), vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(experts)), experts, rotation=45, ha="right")
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlabel("expert (source task)")
    ax.set_ylabel("target")
    for i, j in zip(*np.nonzero(w == 0), strict=True):
        ax.text(j, i, "·", ha="center", va="center", fontsize=14, color="black")
    for i, j in zip(*np.nonzero(w != 0), strict=True):  # viridis is dark at the low end
        ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if w[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="gate weight")
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    save_figure(fig, path)


def plot_recommenders(path: Path, names: list[str], stats: dict[str, list[tuple[float, float, float]]],
                      title: str) -> None:
    """One panel per statistic (value with its interval as error bars) across recommenders, so a
    metric is read against the random baseline and the oracle in the same panel."""
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 0.35 * len(names) + 1.8), sharey=True)
    y = np.arange(len(names))
    for ax, (label, rows) in zip(np.atleast_1d(axes), stats.items()):
        value = np.array([r[0] for r in rows], dtype=float)
        lo = np.array([r[1] if np.isfinite(r[1]) else r[0] for r in rows], dtype=float)
        hi = np.array([r[2] if np.isfinite(r[2]) else r[0] for r in rows], dtype=float)
        ax.barh(y, value, xerr=[value - lo, hi - value], capsize=3, color="tab:blue", alpha=0.7)
        ax.set_yticks(y, names)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_layer_drift(path: Path, groups: list[str], drift: dict[str, dict[str, list[float]]], title: str) -> None:
    """Relative weight drift ||w - w0|| / ||w0|| per encoder layer group, input to output: one panel per
    task, one line per recipe, so where fine-tuning moved the pretrained weights reads as a depth curve.
    Log axis: frozen groups (drift 0) leave gaps, and a recipe that moved nothing is named in the legend."""
    fig, axes = plt.subplots(1, len(drift), figsize=(1.0 + 0.35 * len(groups) * len(drift), 4.4), squeeze=False)
    for ax, (task, lines) in zip(axes[0], drift.items()):
        for label, values in lines.items():
            v = np.asarray(values, dtype=float)
            if not np.any(v > 0):
                ax.plot([], [], marker="o", ms=3, label=f"{label} (no drift)")
                continue
            ax.plot(range(len(groups)), np.where(v > 0, v, np.nan), marker="o", ms=3, label=label)
        ax.set_xticks(range(len(groups)), [g.removeprefix("chgnet.") for g in groups], rotation=60, ha="right",
                      fontsize=6)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("encoder layer group (input → output)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("||w − w0|| / ||w0||")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_depth_profile(path: Path, layers: list[str], profile: dict[str, tuple[list[float], list[float]]],
                       title: str) -> None:
    """A per-layer feature-label score (LogME per sample, mean ± SE over folds) against depth, one line
    per task: which layer's features explain the task's labels best."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(layers), 4))
    for task, (means, ses) in profile.items():
        ax.errorbar(range(len(layers)), means, yerr=ses, marker="o", ms=4, capsize=3, label=task)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("LogME on training labels (per sample)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
