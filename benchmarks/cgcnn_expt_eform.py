"""Published CGCNN formation-energy model (Materials Project, DFT) on experimental formation enthalpies.

One run: loads the experimental formation enthalpy task of the mixture-of-experts study
(``moe_tasks/expt_formation_enthalpy_combined_RC.json.gz``, target ``e_form expt``, eV/atom,
1,709 compounds) with its published seed-0 70/15/15 split, builds CGCNN graphs (radius 8 A, 12
neighbours, 41 Gaussians, padded as the original pipeline), and predicts every row with the
model published with CGCNN (``cgcnn_mp2017/formation-energy-per-atom.pth.tar``, no fine-tuning).
Reports MAE, RMSE, Pearson and Spearman on the seed-0 test split and on all rows, next to the
chance baseline (predicting the training-split mean) on the same rows, and the graph-building
time per structure (best of ``--repeats`` passes; CPU seconds too, steadier on a shared machine).

Run: ``python benchmarks/cgcnn_expt_eform.py [--data ../shared/data]``; results go to
``benchmarks/results/cgcnn_expt_eform.json`` (and ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch_geometric.data import Batch

from tasksim_ray.data.crystal_files import load_json_table
from tasksim_ray.data.splits import load_published_splits
from tasksim_ray.featurize.crystal import GraphSettings, graphs_from_structures
from tasksim_ray.models.published import load_published, predict

REPO = Path(__file__).resolve().parents[1]
TASK = "expt_formation_enthalpy_combined_RC.json.gz"
TARGET = "e_form expt"
MODEL = "cgcnn_mp2017/formation-energy-per-atom.pth.tar"


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred - y
    constant = np.ptp(pred) == 0  # correlations are undefined for a constant prediction
    return {"n": len(y), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "pearson": None if constant else float(stats.pearsonr(pred, y)[0]),
            "spearman": None if constant else float(stats.spearmanr(pred, y)[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0, help="published split seed (0-4)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="graph-building passes timed")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: $OUT/cgcnn_expt_eform.json, else benchmarks/results/)")
    parser.add_argument("--smoke", action="store_true", help="seconds: the split's first 60 rows, one pass")
    args = parser.parse_args()
    crystals = args.data / "crystals"
    ds = load_json_table(crystals / "moe_tasks" / TASK)
    train, _, test = load_published_splits(crystals / "moe_splits", "expt_eform", len(ds), seeds=[args.seed])[0]
    y = ds.labels(TARGET)
    structures, ids = ds.structures, ds.ids
    if args.smoke:  # the first rows only, the split's rows among them
        n, args.repeats = 60, 1
        structures, ids, y = structures[:n], ids[:n], y[:n]
        train, test = train[train < n], test[test < n]

    settings = GraphSettings()
    walls, cpus = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        graphs = graphs_from_structures(structures, settings, where=TASK, row_ids=ids)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    n_atoms = np.array([g.num_nodes for g in graphs])

    model, mean, std, info = load_published(args.data / "models" / MODEL)
    t0, c0 = time.perf_counter(), time.process_time()
    pred = torch.cat([predict(model, Batch.from_data_list(graphs[i:i + args.batch_size]), mean, std)
                      for i in range(0, len(graphs), args.batch_size)]).squeeze(1).numpy().astype(np.float64)
    predict_s, predict_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    chance = np.full_like(y, y[train].mean())

    results: dict[str, Any] = {
        "smoke": args.smoke, "task": TASK, "target": TARGET, "units": ds.units[TARGET], "model": MODEL,
        "split_seed": args.seed,
        "graph_settings": info.graph, "n_rows": len(y), "n_train": len(train), "n_test": len(test),
        "train_mean": float(y[train].mean()),
        "test": {"cgcnn": scores(pred[test], y[test]), "chance": scores(chance[test], y[test])},
        "all": {"cgcnn": scores(pred, y), "chance": scores(chance, y)},
        "graph_build": {"structures": len(graphs), "atoms_mean": float(n_atoms.mean()),
                        "atoms_max": int(n_atoms.max()), "edges": int(sum(g.num_edges for g in graphs)),
                        "wall_s": walls, "cpu_s": cpus, "ms_per_structure": 1000 * min(walls) / len(graphs),
                        "cpu_ms_per_structure": 1000 * min(cpus) / len(graphs)},
        "predict_s": predict_s, "predict_cpu_s": predict_cpu_s,
        "torch": torch.__version__, "host": platform.node(), "cpu_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
    }
    print(f"{TASK} [{TARGET}, {ds.units[TARGET]}]: {len(y)} rows, seed-{args.seed} test {len(test)}, "
          f"model {MODEL} used as published")
    print(f"{'rows':6s} {'predictor':10s} {'MAE':>8s} {'RMSE':>8s} {'Pearson':>8s} {'Spearman':>9s}")
    for rows in ("test", "all"):
        for name, s in results[rows].items():
            r, rho = (f"{s[k]:8.3f}" if s[k] is not None else f"{'-':>8s}" for k in ("pearson", "spearman"))
            print(f"{rows:6s} {name:10s} {s['mae']:8.3f} {s['rmse']:8.3f} {r} {rho:>9s}")
    gb = results["graph_build"]
    print(f"graphs: {gb['ms_per_structure']:.2f} ms/structure wall, {gb['cpu_ms_per_structure']:.2f} ms CPU "
          f"({gb['atoms_mean']:.1f} atoms mean, {gb['atoms_max']} max); "
          f"predict {predict_s:.1f} s wall, {predict_cpu_s:.1f} s CPU")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    out = args.out or out_dir / "cgcnn_expt_eform.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
