"""The foundation study's verdict tables: each recipe against its own architecture from random
initialisation, paired by split seed with a 95% t interval, and the linear probe against the mean
predictor (does the frozen representation carry the target at all?).

Improvement = 100 (baseline - recipe) / baseline per seed (for a higher-is-better score, recipe -
baseline over baseline); the interval and outcome come from the verdict rule (papers.verdict.paired):
a recipe is "better" when the whole interval is above zero, "worse" when below, else "undecided".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasksim_ray.papers.verdict import paired


def baseline_of(arm: str, arms: list[str]) -> str | None:
    """``<model>: scratch`` for a ``<model>: ...`` arm when that arm exists (else the plain ``scratch``)."""
    model = arm.split(": ", 1)[0] if ": " in arm else None
    if model and f"{model}: scratch" in arms and arm != f"{model}: scratch":
        return f"{model}: scratch"
    return "scratch" if "scratch" in arms and arm != "scratch" else None


def _gain(base: np.ndarray, x: np.ndarray, higher_is_better: bool) -> dict[str, Any]:
    g = 100 * ((x - base) if higher_is_better else (base - x)) / np.abs(base)
    v = paired("recipe beats its baseline", g.tolist())
    ci = list(v.ci) if v.ci else [float("nan"), float("nan")]
    verdict = {"agrees": "better", "disagrees": "worse"}.get(v.outcome, "undecided")
    return {"mean": v.estimate, "ci": ci, "values": g.tolist(), "verdict": verdict}


def add_binary_scores(result: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """For each binary target (cells scored by ROC-AUC): its units say so, and each arm's entry gets
    ``auc`` and ``acc`` (mean, std, SE, values over seeds) beside the 1 - ROC-AUC the tables sort by."""
    seeds = result["seeds"]
    for t, e in result["targets"].items():
        mine = {(c["recipe"], c["fold"]): c for c in cells if c["target"] == t and "test_auc" in c}
        if not mine:
            continue
        e["units"], e["binary"] = "1 - ROC-AUC", True
        for arm in result["methods"]:
            for key, name in (("test_auc", "auc"), ("test_acc", "acc")):
                v = np.array([mine[(arm, s)][key] for s in seeds])
                e[arm][name] = {"mean": float(v.mean()), "std": float(v.std()), "seeds": len(v),
                                "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"),
                                "values": v.tolist()}


def binary_markdown(result: dict[str, Any]) -> list[str]:
    rows = {t: e for t, e in result["targets"].items() if e.get("binary")}
    if not rows:
        return []
    md = ["## Binary targets: ROC-AUC and accuracy (logistic loss; mean ± SE over split seeds)", ""]
    for t, e in rows.items():
        md += [f"| {t}: arm | ROC-AUC | accuracy |", "|---|---|---|"]
        md += [f"| {arm} | {e[arm]['auc']['mean']:.3f} ± {e[arm]['auc']['se']:.2g} | "
               f"{e[arm]['acc']['mean']:.3f} ± {e[arm]['acc']['se']:.2g} |" for arm in result["methods"]]
        md.append("")
    return md


def paired_improvements(result: dict[str, Any]) -> dict[str, Any]:
    """Per task and arm: improvement over its baseline (own scratch; the mean predictor for a linear
    probe too), per seed, with the mean's 95% interval and a verdict; a binary target's from its ROC-AUC
    (the paper's (MP-0 - RI) / RI for classification)."""
    arms = result["methods"]
    out: dict[str, Any] = {}
    for t, e in result["targets"].items():
        binary = bool(e.get("binary"))
        rows: dict[str, Any] = {}
        for arm in arms:
            bases = [b for b in (baseline_of(arm, arms),) if b]
            if e[arm].get("kind") == "probe" or arm.endswith("linear probe"):
                bases += ["mean predictor"] if "mean predictor" in arms else []
            for b in bases:
                key = "auc" if binary else None
                base, mine = (e[b][key], e[arm][key]) if key else (e[b], e[arm])
                gain = _gain(np.array(base["values"]), np.array(mine["values"]), binary)
                rows[f"{arm} vs {b}"] = gain | {"arm": arm, "baseline": b}
        out[t] = rows
    return out


def paired_markdown(paired: dict[str, Any], seeds: list[int]) -> list[str]:
    if not paired:
        return []
    md = ["## Improvement over the baseline, paired by split seed", "",
          "Improvement (%) = (baseline - recipe) / baseline test MAE per seed; mean and its 95% t interval over "
          "seeds; better / worse: the whole interval above / below zero.", ""]
    for t, rows in paired.items():
        md += [f"| {t}: recipe vs baseline | " + " | ".join(f"seed {s}" for s in seeds)
               + " | mean (95% interval) | verdict |", "|---" * (len(seeds) + 3) + "|"]
        for label, g in rows.items():
            md.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in g["values"])
                      + f" | {g['mean']:.1f} ({g['ci'][0]:.1f}, {g['ci'][1]:.1f}) | {g['verdict']} |")
        md.append("")
    return md + across_tasks_markdown(paired)


def across_tasks(paired: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per comparison (``recipe vs baseline``), the tasks where it is better, undecided and worse: the
    paper's claim is about every task, so the count across tasks is the page's summary line."""
    out: dict[str, dict[str, list[str]]] = {}
    for t, rows in paired.items():
        for label, g in rows.items():
            out.setdefault(label, {"better": [], "undecided": [], "worse": []})[g["verdict"]].append(t)
    return out


def across_tasks_markdown(paired: dict[str, Any]) -> list[str]:
    if len(paired) < 2:
        return []
    md = ["Across tasks (each task's verdict above):", "",
          "| recipe vs baseline | better | undecided | worse | tasks |", "|---|---|---|---|---|"]
    for label, v in across_tasks(paired).items():
        n = sum(len(x) for x in v.values())
        md.append(f"| {label} | {len(v['better'])} of {n} | {len(v['undecided'])} of {n} | {len(v['worse'])} of {n} | "
                  + "; ".join(f"{k}: {', '.join(ts)}" for k, ts in v.items() if ts) + " |")
    return md + [""]
