"""ASHA vs FIFO on the same search: does early stopping find as good a recipe with fewer epochs?

One run, two searches over the same space on a small QM9 problem (target r2 at 300 training
molecules, the nine other kept tasks as candidate sources, subsets of 1-3 tasks under a 12,000
sample budget, fine-tuning strategy, learning rate and regulariser), the same number of trials
and the same TPE seed: one with ASHA (grace 3 epochs, reduction factor 3, at most 27 epochs),
one with FIFO (every trial runs its 27 epochs). Reports each search's best validation MAE and
the training epochs it spent. Target: ASHA's best within 2% of FIFO's with at most 40% of its
epochs. Pretrained subset models are cached by content, so both searches share them; epochs,
not seconds, are the measure.

Needs the QM9 study's pipeline (``tasksim run configs/qm9_rsa_study.yaml`` or the study itself;
this script runs it first if it is not cached). Run: ``python benchmarks/search.py [--trials 12]``;
results go to ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tasksim_ray.config import load_config
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.search.engine import clear_search, run_search

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "qm9_rsa_study.yaml"
SETTINGS = {"search.targets": ["r2"], "search.size": 300, "search.grace_period": 3, "search.reduction_factor": 3,
            "search.subset_size": [1, 3], "search.strategies": ["full", "last", "head"],
            "transfer.budget.total": 12000, "transfer.budget.epochs": 6}
# --smoke: the tiny config's own search (600 test molecules, hidden 32) in a temporary workdir
SMOKE_CONFIG = REPO / "configs" / "tiny.yaml"
SMOKE_SETTINGS = {"search.grace_period": 1, "search.reduction_factor": 2, "search.max_concurrent": 1}


def search(config: Path, settings: dict[str, Any], workdir: Path, scheduler: str, trials: int, epochs: int,
           console: Console) -> dict[str, Any]:
    target = settings.get("search.targets", load_config(config).search.targets)[0]
    cfg = load_config(config, {
        **settings, "workdir": str(workdir), "search.name": f"bench-{scheduler}",
        "search.scheduler": scheduler, "search.num_trials": trials, "search.seed_from_selection": False,
        "search.regularizers": ["none", "l2sp"],
        "transfer.finetune.max_epochs": epochs, "transfer.finetune.patience": epochs})
    ensure_ray(cfg.ray)
    clear_search(cfg)
    start = time.perf_counter()
    summary = run_search(cfg, console)
    table = pd.read_csv(summary["table"])
    return {"scheduler": scheduler, "trials": int(len(table)), "failed": summary["failed"],
            "epochs": int(table["epochs"].sum()), "seconds": round(time.perf_counter() - start, 1),
            "best_objective": summary["best_objective"], "target": target,
            "best_val_mae": float(table[f"val_mae_{target}"].min()),
            "best_subset": summary["best"]["subset"], "epochs_per_trial": table["epochs"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search.json")
    parser.add_argument("--smoke", action="store_true",
                        help="about a minute: the tiny config's search, 1 trial of 1 epoch each, temporary workdir")
    args = parser.parse_args()
    console = Console(quiet=args.smoke)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="search_bench_") as tmp:
        config, settings, workdir = ((SMOKE_CONFIG, SMOKE_SETTINGS, Path(tmp)) if args.smoke else
                                     (CONFIG, SETTINGS, REPO / "runs" / "qm9_rsa_study"))
        if args.smoke:
            args.trials, args.epochs = 1, 1
        runs = {s: search(config, settings, workdir, s, args.trials, args.epochs, console) for s in ("fifo", "asha")}
    fifo, asha = runs["fifo"], runs["asha"]
    gap = asha["best_val_mae"] / fifo["best_val_mae"] - 1
    share = asha["epochs"] / fifo["epochs"]
    result = {"smoke": args.smoke, "config": str(config.relative_to(REPO)), "runs": runs,
              "asha_vs_fifo_best_gap": round(gap, 4), "asha_epoch_share": round(share, 4),
              "target_met": bool(gap <= 0.02 and share <= 0.40), "load_avg_start": load,
              "load_avg_end": os.getloadavg()}
    for s, r in runs.items():
        print(f"{s:5s}: best val MAE ({r['target']}) {r['best_val_mae']:.3f}, {r['epochs']} epochs over "
              f"{r['trials']} trials, {r['seconds']:.0f} s; best subset {r['best_subset']}")
    print(f"ASHA best is {100 * gap:+.1f}% vs FIFO, with {100 * share:.0f}% of its epochs: target "
          f"{'met' if result['target_met'] else 'missed'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
