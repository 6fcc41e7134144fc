"""Grid searches on the validation split: the foundation study's penalty weights and learning rates.

Each grid point is its own recipe (its own cached cell); per arm, task and split seed the point
with the lowest validation MAE is the arm's result (test labels are never read to choose). With
``grid_seeds: first`` every grid point (learning rate, penalty weights) is chosen on the first
split seed only, per arm and task, and the other seeds train that point alone.
The report shows every point's validation MAE, the spread across the grid (so a tie is visible),
and whether a chosen value sits at the grid's edge.
"""

from __future__ import annotations

import itertools
from typing import Any


Grid = dict[str, tuple[str, dict[str, float]]]  # grid point label -> (arm, its values by kind)


def grid_points(grid: dict[str, list[float]] | None) -> list[dict[str, float]]:
    """Every combination of the grid's values (kind -> value); ``[{}]`` without a grid."""
    if not grid:
        return [{}]
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def point_label(arm: str, values: dict[str, float]) -> str:
    return arm + (" [" + ", ".join(f"{k}={w:g}" for k, w in values.items()) + "]" if values else "")


def select_grid(cells: list[dict[str, Any]], grid: Grid) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Cells with each gridded arm's points replaced, per (task, split seed), by the point with
    the lowest validation MAE (relabelled as the arm); and per arm and task the search: each
    point's validation and test MAE per seed and the values chosen per seed."""
    out = [c for c in cells if c["recipe"] not in grid]
    search: dict[str, Any] = {}
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for c in cells:
        if c["recipe"] in grid:
            groups.setdefault((grid[c["recipe"]][0], c["target"], c["fold"]), []).append(c)
    for (arm, target, seed), points in groups.items():
        best = min(points, key=lambda c: c["val_mae"])
        out.append(best | {"recipe": arm, "grid_point": grid[best["recipe"]][1]})
        entry = search.setdefault(arm, {}).setdefault(target, {"points": {}, "chosen": {}})
        entry["chosen"][str(seed)] = grid[best["recipe"]][1]
        for c in points:
            p = entry["points"].setdefault(c["recipe"], {"weights": grid[c["recipe"]][1], "val_mae": {},
                                                         "test_mae": {}})
            p["val_mae"][str(seed)], p["test_mae"][str(seed)] = c["val_mae"], c["test_mae"]
    return out, search


def chosen_points(cells: list[dict[str, Any]], grid: Grid) -> dict[tuple[str, str], dict[str, float]]:
    """Per (arm, task): the values of the grid point with the lowest validation MAE among ``cells``
    (the first split seed's)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cells:
        if c["recipe"] in grid:
            key = (grid[c["recipe"]][0], c["target"])
            if key not in best or c["val_mae"] < best[key]["val_mae"]:
                best[key] = c
    return {k: grid[c["recipe"]][1] for k, c in best.items()}


def keep_chosen(jobs: list[Any], grid: Grid, first: int, chosen: dict[tuple[str, str], dict[str, float]]) -> list[Any]:
    """``jobs`` ((cell, recipe) pairs) with, outside split seed ``first``, only each gridded arm's
    point chosen there."""
    def keep(cell: Any, label: str) -> bool:
        if cell.fold == first or label not in grid:
            return True
        arm, values = grid[label]
        return values == chosen[(arm, cell.target)]
    return [(c, r) for c, r in jobs if keep(c, r.label)]


def _edges(points: list[dict[str, Any]], chosen: list[dict[str, float]]) -> list[str]:
    """The kinds whose chosen value (any seed) is the smallest or largest of the grid."""
    kinds = list(points[0]["weights"]) if points else []
    out = []
    for k in kinds:
        values = sorted({p["weights"][k] for p in points})
        if len(values) > 1 and any(c.get(k) in (values[0], values[-1]) for c in chosen):
            out.append(k)
    return out


def grid_markdown(r: dict[str, Any]) -> list[str]:
    """Per gridded arm and task: each point's validation MAE per split seed (where it ran), its test
    MAE on the first seed, how often validation chose it, the spread of validation MAE across the grid on the
    first seed, and whether a chosen value sits at the grid's edge."""
    md: list[str] = []
    seeds = [str(s) for s in r["seeds"]]
    for arm, per_task in r.get("grid", {}).items():
        md += [f"## Grid search of {arm} on the validation split", "",
               "Every point trained where listed; per seed the lowest validation MAE is the arm's result. Spread: "
               "(max - min) / min of validation MAE over the points of the first seed.", ""]
        for t, e in per_task.items():
            points = list(e["points"].values())
            header = " | ".join(f"val seed {s}" for s in seeds)
            md += [f"| {t}: point | {header} | test seed {seeds[0]} | chosen |",
                   "|---" * (len(seeds) + 3) + "|"]
            for p in points:
                w = p["weights"]
                n = sum(c == w for c in e["chosen"].values())
                vals = " | ".join(f"{p['val_mae'][s]:.4g}" if s in p["val_mae"] else "-" for s in seeds)
                test = p["test_mae"].get(seeds[0], float("nan"))  # one seed for every point: comparable rows
                md.append(f"| {', '.join(f'{k} {v:g}' for k, v in w.items())} | {vals} | {test:.4g} | "
                          f"{n} of {len(e['chosen'])} |")
            first = [p["val_mae"][seeds[0]] for p in points if seeds[0] in p["val_mae"]]
            spread = 100 * (max(first) - min(first)) / min(first) if first else float("nan")
            edges = _edges(points, list(e["chosen"].values()))
            md += ["", f"Spread of validation MAE across the grid (seed {seeds[0]}): {spread:.2f}%; chosen at the "
                   f"grid's edge: {', '.join(edges) if edges else 'none (interior)'}.", ""]
    return md


def convergence(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and arm: each seed's epoch of the best validation MAE, epochs run, and whether the
    best epoch was the last (an arm still improving when its budget ran out)."""
    out: dict[str, Any] = {}
    for c in cells:
        if c.get("epochs_run", 0) > 0:
            out.setdefault(c["target"], {}).setdefault(c["recipe"], {})[str(c["fold"])] = {
                "best_epoch": c["best_epoch"], "epochs_run": c["epochs_run"],
                "last": c["best_epoch"] == c["epochs_run"] - 1}
    return out


def convergence_markdown(r: dict[str, Any]) -> list[str]:
    conv = r.get("convergence") or {}
    if not conv:
        return []
    seeds = [str(s) for s in r["seeds"]]
    md = ["### Convergence: epoch of the best validation MAE / epochs run, per seed (* = the last epoch: "
          "still improving when the budget ran out)", ""]
    for t, arms in conv.items():
        md += [f"| {t}: arm | " + " | ".join(f"seed {s}" for s in seeds) + " | best at last epoch |",
               "|---" * (len(seeds) + 2) + "|"]
        for arm, per in arms.items():
            row = " | ".join(f"{per[s]['best_epoch'] + 1}/{per[s]['epochs_run']}{'*' if per[s]['last'] else ''}"
                             if s in per else "-" for s in seeds)
            md.append(f"| {arm} | {row} | {sum(x['last'] for x in per.values())} of {len(per)} |")
        md.append("")
    return md
