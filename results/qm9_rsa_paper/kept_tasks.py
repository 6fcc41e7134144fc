"""Why a config keeps the tasks it keeps: the Pearson correlation matrix of the training labels (the
preprocess stage's split and filter), the kept and dropped tasks, and the same filter after removing
the molecules with the most extreme values of a few columns (``--trim``), as markdown.

    python results/qm9_rsa_paper/kept_tasks.py configs/qm9_rsa_paper.yaml --trim A B --quantile 0.9999
"""

from __future__ import annotations

import argparse

import pandas as pd

from tasksim_ray.config import load_config
from tasksim_ray.data.preprocess import filter_correlated, split_molecules
from tasksim_ray.data.sources import load_tasks


def kept_line(labels: pd.DataFrame, threshold: float) -> str:
    kept, dropped = filter_correlated(labels, threshold)
    why = ", ".join(f"{d.name} (r {d.pearson_r:+.2f} with {d.because_of})" for d in dropped)
    return f"{len(kept)} kept: {', '.join(kept)}; dropped: {why}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--trim", nargs="*", default=[], help="columns whose most extreme molecules are removed")
    ap.add_argument("--quantile", type=float, default=0.9999, help="keep molecules at or below this quantile")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if cfg.data.split.kind != "random":
        raise SystemExit("this script reproduces the random shared split only")
    table = load_tasks(cfg.data)
    split = split_molecules(len(table.frame), cfg.preprocess.split, cfg.preprocess.n_folds, cfg.seed)
    labels = table.frame.iloc[split.train][table.names]
    thr = cfg.preprocess.corr_threshold
    corr = labels.corr(method="pearson")
    print(f"Pearson r on the {len(labels)} training molecules (`{args.config}`, seed {cfg.seed}):\n")
    print("| | " + " | ".join(corr.columns) + " |\n|---" * 1 + "|---" * len(corr.columns) + "|")
    for name, row in corr.iterrows():
        print(f"| {name} | " + " | ".join(f"**{v:.2f}**" if abs(v) > thr and a != name else f"{v:.2f}"
                                          for a, v in row.items()) + " |")
    print(f"\nFilter at |r| > {thr}, in the config's order: {kept_line(labels, thr)}.")
    if args.trim:
        keep = pd.Series(True, index=labels.index)
        for col in args.trim:
            keep &= labels[col] <= labels[col].quantile(args.quantile)
        trimmed = labels[keep]
        shown = [(a, b) for a in args.trim for b in corr.columns if b != a and abs(trimmed.corr().loc[a, b]) > thr
                 and abs(corr.loc[a, b]) <= thr]
        changes = "; ".join(f"{a}-{b} {corr.loc[a, b]:+.2f} -> {trimmed.corr().loc[a, b]:+.2f}" for a, b in shown)
        print(f"\nWithout the {int((~keep).sum())} molecules above the {args.quantile} quantile of "
              f"{', '.join(args.trim)} ({changes or 'no pair crosses the threshold'}): {kept_line(trimmed, thr)}.")
        spear = labels[list(dict.fromkeys(args.trim + [b for _, b in shown]))].corr(method="spearman")
        print("\nSpearman on all training molecules: " + "; ".join(
            f"{a}-{b} {spear.loc[a, b]:+.2f}" for a, b in shown) + ".")


if __name__ == "__main__":
    main()
