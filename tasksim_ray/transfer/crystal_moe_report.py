"""Report of the crystal MoE study: test MAE mean +- std over seeds per task and method (markdown,
CSV, JSON), the per-epoch cost of each method, and the learned gates as a heatmap."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import CrystalMoEConfig
from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic
from tasksim_ray.infra.figures import plt, save_figure
from tasksim_ray.models.published import task_name

METHODS = {"stl": "STL", "tl": "TL", "moe": "MoE"}


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task: units, sizes, and per method the test MAE mean, std (numpy's, over
    seeds, as published) and the number of seeds."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r["task"], {"task": r["task"], "target": r["target"], "units": r["units"],
                                          "n_train_val_test": r["n"]})
        row.setdefault(r["method"], []).append(r["test_mae"])
    out = []
    for row in rows.values():
        for m in METHODS:
            if m in row:
                maes = np.asarray(row.pop(m))
                row |= {f"{m}_mean": float(maes.mean()), f"{m}_std": float(maes.std()), f"{m}_seeds": len(maes)}
        out.append(row)
    return out


def mean_gates(results: list[dict[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """(tasks, experts, mean gate weight over seeds), from the MoE cells."""
    moe = [r for r in results if r["method"] == "moe"]
    tasks = list(dict.fromkeys(r["task"] for r in moe))
    experts = list(dict.fromkeys(e for r in moe for e in r["gates"]))
    g = np.zeros((len(tasks), len(experts)))
    for i, t in enumerate(tasks):
        mine = [r["gates"] for r in moe if r["task"] == t]
        g[i] = [np.mean([m.get(e, 0.0) for m in mine]) for e in experts]
    return tasks, experts, g


def _cell(row: dict[str, Any], m: str) -> str:
    return f"{row[f'{m}_mean']:.4g} ± {row[f'{m}_std']:.2g}" if f"{m}_mean" in row else "–"


def markdown(rows: list[dict[str, Any]], results: list[dict[str, Any]], cfg: CrystalMoEConfig) -> str:
    methods = [m for m in METHODS if m in cfg.methods]
    setting = ("all extractor layers frozen (`freeze_last_conv: true`: pooled features precomputed, only the "
               "gate and head train)" if cfg.freeze_last_conv else
               "each extractor's last convolution trainable (published setting)")
    lines = ["# Crystal mixture of experts: STL vs TL vs MoE", "",
             (f"Test MAE (task units), mean ± std over seeds {cfg.seeds}; TL/MoE: {setting}; "
              f"MoE k={cfg.k} of {len(mean_gates(results)[1]) or '?'} experts, penalty {cfg.penalty} on "
              f"{cfg.penalty_on}; max epochs {cfg.max_epochs} (STL {cfg.stl_epochs}, {cfg.stl_optimizer} lr "
              f"{cfg.stl_lr}), patience {cfg.patience}, batch {cfg.batch_size}."), "",
             "| task | target (units) | train/val/test | " + " | ".join(METHODS[m] for m in methods) + " | best |",
             "|---|---|---|" + "---|" * len(methods) + "---|"]
    for row in rows:
        present = [m for m in methods if f"{m}_mean" in row]
        best = METHODS[min(present, key=lambda m: row[f"{m}_mean"])] if present else "–"
        units = f" ({row['units']})" if row["units"] else ""
        lines.append(f"| {row['task']} | {row['target']}{units} | {'/'.join(map(str, row['n_train_val_test']))} | "
                     + " | ".join(_cell(row, m) for m in methods) + f" | {best} |")
    lines += ["", "## Cost", "", "| method | cells | mean epochs | mean s/epoch | mean s/cell |", "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if rs:
            lines.append(f"| {METHODS[m]} | {len(rs)} | {np.mean([r['epochs'] for r in rs]):.0f} | "
                         f"{np.mean([r['s_per_epoch'] for r in rs]):.4f} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    tasks, experts, g = mean_gates(results)
    if tasks:
        lines += ["", "## Strongest gates (mean over seeds)", ""]
        for i, t in enumerate(tasks):
            top = np.argsort(-g[i])[:cfg.k]
            lines.append(f"- {t}: " + ", ".join(f"{task_name(Path(experts[j]))} {g[i, j]:.2f}" for j in top
                                                if g[i, j] > 0))
    return "\n".join(lines) + "\n"


def gates_heatmap(results: list[dict[str, Any]], path: Path) -> None:
    tasks, experts, g = mean_gates(results)
    fig, ax = plt.subplots(figsize=(4.5 + 0.45 * len(experts), 1.8 + 0.4 * len(tasks)))
    im = ax.imshow(g, cmap="viridis", vmin=0, aspect="auto")
    ax.set_xticks(range(len(experts)), [task_name(Path(e)) for e in experts], rotation=60, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title("MoE gate weights (mean over seeds)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(results: list[dict[str, Any]], cfg: CrystalMoEConfig, out_dir: Path) -> dict[str, Path]:
    """``moe_table.md``, ``moe_table.csv``, ``moe_results.json`` (every cell) and, with MoE cells,
    ``gates_heatmap.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    paths = {"markdown": out_dir / "moe_table.md", "csv": out_dir / "moe_table.csv", "json": out_dir / "moe_results.json"}
    write_text_atomic(paths["markdown"], markdown(rows, results, cfg))
    buf = io.StringIO()
    fields = ["task", "target", "units"] + [f"{m}_{s}" for m in METHODS if m in cfg.methods
                                            for s in ("mean", "std", "seeds")]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(paths["csv"], buf.getvalue())
    write_json_atomic(paths["json"], {"config": cfg.model_dump(), "summary": rows, "cells": results})
    if any(r["method"] == "moe" for r in results):
        paths["heatmap"] = out_dir / "gates_heatmap.png"
        gates_heatmap(results, paths["heatmap"])
    return paths
