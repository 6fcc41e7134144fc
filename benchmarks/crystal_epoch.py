"""Per-epoch seconds of the crystal STL and MoE cells, before and after the epoch-cost work.

Compares, in one run and on the same inputs, the code at ``--before`` (fb38db2: CGCNN's gate
layer applied to the concatenated bond rows, every expert's cached atom features collated into
every batch, the validation graphs re-collated each epoch) with the working tree (the atom terms
of the gate layer computed once per atom, the selected experts' atom features gathered per batch,
the validation batches collated once). Each version runs in its own process, the old one from a
``git archive`` of that commit, through the same entry point, ``transfer.cells.run_cell``, with
the published setting (``configs/crystal_moe_published.yaml``: STL = CGCNN from scratch with SGD
+ cosine, MoE = the 18 published extractors with trainable last convolutions, batch 250) for
``--epochs`` epochs at 1 and 2 torch threads: STL, and MoE at k = 2, 4 and 18 of the 18 extractors.
Per-epoch seconds are the loop's own (training and validation, not the setup); the training losses
of both versions are compared epoch by epoch, as the numerical check.

Data: the shared data folder (``--data``, default ``../shared/data`` from the repository root):
the experimental formation enthalpy task (1196 training crystals) and the TBmBJ dielectric task
(84), published split seed 0. Results go to ``benchmarks/results/crystal_epoch.json``.
Run (timings on a shared machine): ``flock /tmp/bench.lock python benchmarks/crystal_epoch.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"expt_eform": ("expt_formation_enthalpy_combined_RC", "e_form expt"),
         "jarvis_2d_dielectric_tbmbj": ("jarvis_dft_2d_dielectric_tbmbj_2022-04-11", "dielectric tbmbj")}
SPLIT = "crystals/moe_splits/task_partition_indices_seed0_correctedExptEf.json"
EXTRACTORS = "models/cgcnn_moe_extractors"
CASES = ("stl", "moe k=2", "moe k=4", "moe k=18")


def prepare(data: Path, key: str) -> dict[str, Any]:
    """One task's graph store with every extractor's frozen atom features (``h_in/<name>``), its
    labels and its published seed-0 split, as the methods study hands a cell."""
    from pymatgen.core import Structure

    from tasksim_ray.featurize.crystal import structure_to_graph
    from tasksim_ray.featurize.graphstore import pack_graphs
    from tasksim_ray.models.published import extractor_features, load_published

    file, column = TASKS[key]
    table = json.loads(gzip.decompress((data / "crystals" / "moe_tasks" / f"{file}.json.gz").read_bytes()))
    split = json.loads((data / SPLIT).read_text())[key]
    rows = sorted({r for part in split for r in part})
    pos = {r: i for i, r in enumerate(rows)}
    graphs = [structure_to_graph(Structure.from_dict(table["data"][r]["structure"])) for r in rows]
    store = pack_graphs(graphs)
    for f in sorted((data / EXTRACTORS).glob("*.pth.tar")):
        store[f"h_in/{f.name}"] = extractor_features(load_published(f)[0], graphs)[0]
    return {"store": store, "y": np.array([table["data"][r][column] for r in rows], float),
            "split": [np.array([pos[r] for r in part]) for part in split]}


def time_cells(inputs: dict[str, Any], data: Path, threads: int, epochs: int) -> dict[str, Any]:
    """Every (task, case) cell of the imported ``tasksim_ray`` at ``threads``: per-epoch seconds,
    the epochs' training losses and the test MAE."""
    from tasksim_ray.config import load_config
    from tasksim_ray.transfer import cells

    histories: list[list[dict[str, float]]] = []
    fit = cells.fit

    def recording_fit(*args: Any, **kwargs: Any) -> Any:
        result = fit(*args, **kwargs)
        histories.append(result.history)
        return result

    cells.fit = recording_fit
    cfg = load_config(ROOT / "configs" / "crystal_moe_published.yaml")
    tc = cfg.transfer
    extractors = tuple(str(f) for f in sorted((data / EXTRACTORS).glob("*.pth.tar")))
    out: dict[str, Any] = {}
    for key, task in inputs.items():
        tr, va, te = task["split"]
        y = task["y"]
        cell = cells.CellData(key, 0, None, tr, y[tr], va, y[va], te, y[te], key, seed=0, standardize="train_val")
        for case in CASES:
            k = int(case.split("=")[1]) if "=" in case else tc.moe.k
            settings = cells.CellSettings(cfg.model, tc.finetune.model_copy(update={"max_epochs": epochs}),
                                          tc.moe.model_copy(update={"k": k}), 0, tc.scratch)
            recipe = (cells.Recipe("scratch", "scratch") if case == "stl"
                      else cells.Recipe("moe", "moe", extractors, published=True))
            start = time.perf_counter()
            result = cells.run_cell(task["store"], cell, recipe, settings, threads)
            wall = time.perf_counter() - start
            out[f"{key} | {case}"] = {"epoch_s": round(result["seconds"] / result["epochs_run"], 4),
                                      "cell_s": round(wall, 3), "test_mae": result["test_mae"],
                                      "train_loss": [h["train_loss"] for h in histories[-1]]}
            print(f"  {threads} thread(s) {key:28s} {case:9s} {out[f'{key} | {case}']['epoch_s']:8.3f} s/epoch",
                  flush=True)
    return out


def old_tree(commit: str, into: Path) -> Path:
    """The package as it was at ``commit``, extracted from git (nothing in the work tree changes)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "tasksim_ray"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def worker(args: argparse.Namespace) -> None:
    """One version's timings (``--worker``): the parent points PYTHONPATH at the version."""
    inputs = torch.load(args.worker, weights_only=False)
    result = time_cells(inputs, args.data, args.threads[0], args.epochs)
    args.out.write_text(json.dumps(result))


def run_version(name: str, pythonpath: Path, inputs: Path, args: argparse.Namespace, threads: int,
                tmp: Path) -> dict[str, Any]:
    part = tmp / f"{name}_{threads}.json"
    env = os.environ | {"PYTHONPATH": str(pythonpath)}
    subprocess.run([sys.executable, __file__, "--worker", str(inputs), "--out", str(part), "--data", str(args.data),
                    "--threads", str(threads), "--epochs", str(args.epochs)], check=True, env=env)
    return json.loads(part.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--before", default="fb38db2")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="reuse (or write) the prepared inputs here; the extractor features take minutes")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crystal_epoch.json")
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="crystal_epoch_") as scratch:
        tmp = Path(scratch)
        inputs = args.inputs or tmp / "inputs.pt"
        if not inputs.exists():
            torch.save({key: prepare(args.data, key) for key in TASKS}, inputs)
        versions = {"before": old_tree(args.before, tmp / "before"), "after": ROOT}
        timings = {f"{name} {t}": run_version(name, path, inputs, args, t, tmp)
                   for t in args.threads for name, path in versions.items()}
    rows = list(timings[f"after {args.threads[0]}"])
    table = {row: {label: timings[label][row]["epoch_s"] for label in timings} for row in rows}
    drift = {row: max(abs(a - b) for t in args.threads for a, b in
                      zip(timings[f"before {t}"][row]["train_loss"], timings[f"after {t}"][row]["train_loss"]))
             for row in rows}
    print(f"{'seconds per epoch':40s} " + " ".join(f"{label:>9s}" for label in timings) + "  max |d loss|")
    for row in rows:
        print(f"{row:40s} " + " ".join(f"{table[row][label]:9.3f}" for label in timings) + f"  {drift[row]:.1e}")
    print(f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    result = {"epochs": args.epochs, "before": args.before, "epoch_s": table, "max_train_loss_diff": drift,
              "cells": timings, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_geometric": __import__("torch_geometric").__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_suffix(".json.tmp")
    part.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(part, args.out)


if __name__ == "__main__":
    main()
