"""Training throughput of tasksim_ray's D-MPNN against chemprop v2's MPNN, on CPU.

Measures molecules/s while training (training molecules seen / seconds spent in the epoch loop)
and the best validation MAE, in the target's units, of both models trained on the same QM9 rows
with the same settings: hidden size 300, depth 3, the same aggregation (default mean), a 300-wide
one-hidden-layer FFN, Adam at a constant lr, same batch size, epochs, torch threads and target
standardisation.

Timing excludes featurisation (reported separately, RDKit parsing included). Each model's epoch
loop runs a validation pass after every epoch, so two times are reported: ``train_seconds``
(training batches only: the throughput figure) and ``fit_seconds`` (epochs plus validation).

Target: ours >= chemprop in molecules/s, at a validation MAE equal within seed-to-seed noise.

Needs chemprop v2: ``pip install "chemprop==2.2.4"`` (2.3.x pulls cuik_molmaker_pin, which pins
another rdkit). Results go to ``benchmarks/results/train_throughput.json``.
Run: ``python benchmarks/train_throughput.py [--threads 1] [--epochs 10] [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

try:  # the peer is an optional extra (`bench`); without it only our side runs, and the JSON says so
    import lightning.pytorch as pl
    from chemprop import nn as cnn
    from chemprop.data import MoleculeDatapoint, MoleculeDataset, build_dataloader
    from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
    from chemprop.models import MPNN
    PEER_MISSING = ""
except ImportError as exc:
    PEER_MISSING = f"chemprop v2 not installed ({exc}); only tasksim_ray ran"

import tasksim_ray
from tasksim_ray.config import TrainConfig
from tasksim_ray.featurize.molecule import featurize_many
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.training import loop as ts_train

REPO = Path(__file__).resolve().parents[1]
SHARED_QM9 = REPO.parent / "shared" / "data" / "molecules" / "qm9_motse" / "10000"  # the shared/ beside the repo
FALLBACK_CSV = REPO / "tests/data/qm9_motse_600.csv"
OUT_JSON = REPO / "benchmarks/results/train_throughput.json"
HIDDEN, DEPTH, VAL_BATCH = 300, 3, 256  # VAL_BATCH: what tasksim_ray.training.loop.fit validates with
AGGREGATIONS = ("mean", "norm", "sum")

Run = dict[str, Any]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="folder with train.csv and valid.csv, or one CSV to split "
                        f"(default: {SHARED_QM9}, else {FALLBACK_CSV.relative_to(REPO)})")
    p.add_argument("--target", default="gap", help="target column (default: gap, in Hartree)")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aggregation", choices=AGGREGATIONS, default="mean",
                   help="atom-to-molecule pooling for both models (norm: sum / 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MAE noise = std over seeds")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads for both models")
    p.add_argument("--out", type=Path, default=OUT_JSON)
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long check that the script runs: 100 molecules of tests/data, 1 epoch, 1 seed")
    args = p.parse_args()
    if args.smoke:
        args.data, args.n_train, args.n_val, args.epochs, args.seeds = FALLBACK_CSV, 100, 30, 1, [0]
    return args


def load_split(data: Path | None, target: str, n_train: int, n_val: int,
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Train and validation rows (smiles, target); a single CSV is split at random."""
    data = data or (SHARED_QM9 if (SHARED_QM9 / "train.csv").is_file() else FALLBACK_CSV)
    if data.is_dir():
        train, val = pd.read_csv(data / "train.csv"), pd.read_csv(data / "valid.csv")
    else:
        df = pd.read_csv(data).sample(frac=1.0, random_state=seed)
        n_val = min(n_val, len(df) // 5)
        train, val = df.iloc[n_val:], df.iloc[:n_val]
    if target not in train.columns:
        raise SystemExit(f"{data}: no column {target!r}; columns are {list(train.columns)}")
    keep = ["smiles", target]
    train, val = (d[keep].dropna() for d in (train, val))
    return train.head(n_train).reset_index(drop=True), val.head(n_val).reset_index(drop=True), str(data)


def clock() -> np.ndarray:
    """Wall and process-CPU seconds now; CPU well below wall means other load starved the run."""
    return np.array([time.perf_counter(), time.process_time()])


@contextmanager
def timed_validation(log: list[np.ndarray]) -> Iterator[None]:
    """Record (wall, cpu) of each ``predict_batches`` call that ``fit`` makes for its validation pass."""
    original: Callable = ts_train.predict_batches

    def wrapper(*args: Any, **kwargs: Any) -> np.ndarray:
        t0 = clock()
        out = original(*args, **kwargs)
        log.append(clock() - t0)
        return out

    ts_train.predict_batches = wrapper
    try:
        yield
    finally:
        ts_train.predict_batches = original


def run_ours(train_g: list, y_train: np.ndarray, val_g: list, y_val: np.ndarray,
             args: argparse.Namespace, seed: int, mean: float, std: float) -> Run:
    """Train our D-MPNN with ``tasksim_ray.training.loop.fit``; validation time is split out of its timer."""
    torch.manual_seed(seed)
    model = DMPNN(hidden_dim=HIDDEN, depth=DEPTH, aggregation=args.aggregation, ffn_hidden_dim=HIDDEN,
                  ffn_layers=2, n_tasks=1)
    cfg = TrainConfig(max_epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size, lr=args.lr)
    val_log: list[np.ndarray] = []
    t0 = clock()
    with timed_validation(val_log):
        res = ts_train.fit(model, train_g, y_train, val_g, y_val, ts_train.FitOptions.from_train(cfg), seed, mean, std)
    fit_cpu = (clock() - t0)[1]  # also counts fit's small set-up before its own timer starts
    if len(val_log) != res.epochs_run:
        raise RuntimeError("fit no longer validates through predict_batches once per epoch; fix timing")
    val_wall, val_cpu = np.sum(val_log, axis=0)
    train_s, seen = res.seconds - val_wall, res.n_train * res.epochs_run  # fit keeps the last small batch
    return {"seed": seed, "epochs": res.epochs_run, "train_seconds": train_s,
            "train_cpu_seconds": fit_cpu - val_cpu, "fit_seconds": res.seconds,
            "molecules_per_s": seen / train_s, "fit_molecules_per_s": res.molecules_per_s,
            "val_mae": res.best_val_mae, "final_val_mae": res.history[-1]["val_mae"],
            "threads": torch.get_num_threads()}


def chemprop_datasets(train: pd.DataFrame, val: pd.DataFrame, target: str,
                      mean: float, std: float) -> tuple[Any, Any]:
    """Featurised (cached) chemprop datasets with targets standardised by the train mean/std."""
    featurizer = SimpleMoleculeMolGraphFeaturizer()
    out = []
    for df in (train, val):
        ys = (df[target].to_numpy(dtype=float) - mean) / std
        points = [MoleculeDatapoint.from_smi(s, y=np.array([y])) for s, y in zip(df["smiles"], ys, strict=True)]
        ds = MoleculeDataset(points, featurizer)
        ds.cache = True  # featurise now, not inside the timed epochs
        out.append(ds)
    return out[0], out[1]


def run_chemprop(train_ds: Any, val_ds: Any, args: argparse.Namespace, seed: int, std: float) -> Run:
    """Train chemprop's MPNN with a bare Lightning Trainer (no logger, checkpoints or progress bar)."""
    class Timer(pl.Callback):
        """Times the epoch loop and its validation passes; keeps each epoch's val MAE."""

        def __init__(self) -> None:
            self.fit = self.val = np.zeros(2)
            self.seen = 0
            self.val_mae: list[float] = []

        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.t0 = clock()

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.fit = clock() - self.t0

        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any,
                               batch: Any, batch_idx: int) -> None:
            self.seen += len(batch[0])

        def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.v0 = clock()

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.val = self.val + clock() - self.v0
            self.val_mae.append(float(trainer.callback_metrics["val/mae"]) * std)

    torch.manual_seed(seed)
    aggregation = {"mean": cnn.MeanAggregation, "sum": cnn.SumAggregation, "norm": cnn.NormAggregation}
    model = MPNN(cnn.BondMessagePassing(d_h=HIDDEN, depth=DEPTH), aggregation[args.aggregation](),
                 cnn.RegressionFFN(input_dim=HIDDEN, hidden_dim=HIDDEN, n_layers=1),
                 metrics=[cnn.MAE()], init_lr=args.lr, max_lr=args.lr, final_lr=args.lr)  # constant lr
    train_dl = build_dataloader(train_ds, batch_size=args.batch_size, seed=seed, shuffle=True)
    val_dl = build_dataloader(val_ds, batch_size=VAL_BATCH, shuffle=False)
    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(model, train_dl, val_dl)
    fit_s, (train_s, train_cpu) = timer.fit[0], timer.fit - timer.val
    return {"seed": seed, "epochs": trainer.current_epoch, "train_seconds": train_s,
            "train_cpu_seconds": train_cpu, "fit_seconds": fit_s, "molecules_per_s": timer.seen / train_s,
            "fit_molecules_per_s": timer.seen / fit_s, "val_mae": min(timer.val_mae),
            "final_val_mae": timer.val_mae[-1], "threads": torch.get_num_threads()}


def summarise(runs: list[Run], featurize_s: float) -> dict[str, Any]:
    """Median of the timings, mean and std of the MAEs over seeds, plus every run."""
    maes = [r["val_mae"] for r in runs]
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("train_seconds", "train_cpu_seconds", "fit_seconds", "molecules_per_s",
                     "fit_molecules_per_s")}
    return {**med, "featurize_seconds": featurize_s, "epochs": runs[0]["epochs"],
            "val_mae": statistics.fmean(maes), "val_mae_std": statistics.stdev(maes) if len(maes) > 1 else 0.0,
            "runs": runs}


def print_table(res: dict[str, Any], unit: str) -> None:
    cols = ["molecules/s", "train s", "fit s", "featurize s", f"val MAE ({unit})", "epochs"]
    print(f"\n{'model':<12}" + "".join(f"{c:>18}" for c in cols))
    for name, m in res["models"].items():
        mae = f"{m['val_mae']:.5f}±{m['val_mae_std']:.5f}"
        vals = [f"{m['molecules_per_s']:.0f}", f"{m['train_seconds']:.2f}", f"{m['fit_seconds']:.2f}",
                f"{m['featurize_seconds']:.2f}", mae, str(m["epochs"])]
        print(f"{name:<12}" + "".join(f"{v:>18}" for v in vals))
    r = res["ratio_ours_over_chemprop"]
    if r is None:
        return
    verdict = "met" if res["target_met"] else "missed"
    print(f"target (ours >= chemprop molecules/s at equal MAE): {verdict}")
    print(f"\nours/chemprop: {r['molecules_per_s']:.2f}x training throughput, "
          f"{r['fit_molecules_per_s']:.2f}x incl. validation, val MAE ratio {r['val_mae']:.3f}")


def write_json(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")  # lightning vs torch 2.13 deprecation


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    train, val, source = load_split(args.data, args.target, args.n_train, args.n_val)

    t0 = time.perf_counter()
    (train_g, _), (val_g, _) = featurize_many(train["smiles"].tolist()), featurize_many(val["smiles"].tolist())
    ours_feat_s = time.perf_counter() - t0
    train, val = (df[[g is not None for g in gs]].reset_index(drop=True) for df, gs in ((train, train_g), (val, val_g)))
    train_g, val_g = [g for g in train_g if g is not None], [g for g in val_g if g is not None]
    y_train, y_val = train[args.target].to_numpy(float), val[args.target].to_numpy(float)
    mean, std = float(y_train.mean()), float(y_train.std())

    if not PEER_MISSING:
        t0 = time.perf_counter()
        train_ds, val_ds = chemprop_datasets(train, val, args.target, mean, std)
        cp_feat_s = time.perf_counter() - t0
    print(f"{source}: {len(train)} train / {len(val)} val molecules, target {args.target}, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} torch threads")
    if PEER_MISSING:
        print(f"warning: {PEER_MISSING}")

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.1f} before starting; other processes will skew "
              "the timings (compare train_cpu_seconds with train_seconds; --threads 1 degrades least)")
    ours: list[Run] = []
    chemprop: list[Run] = []
    for i, seed in enumerate(args.seeds):  # alternate who goes first, so neither always runs cold
        for ours_turn in (True, False) if i % 2 == 0 else (False, True):
            if ours_turn:
                ours.append(run_ours(train_g, y_train, val_g, y_val, args, seed, mean, std))
            elif not PEER_MISSING:
                chemprop.append(run_chemprop(train_ds, val_ds, args, seed, std))
        peer = f"; chemprop {chemprop[-1]['molecules_per_s']:.0f} mol/s, MAE {chemprop[-1]['val_mae']:.5f}" \
            if chemprop else ""
        print(f"seed {seed}: ours {ours[-1]['molecules_per_s']:.0f} mol/s, MAE {ours[-1]['val_mae']:.5f}{peer}")

    models = {"tasksim_ray": summarise(ours, ours_feat_s)}
    if chemprop:
        models["chemprop"] = summarise(chemprop, cp_feat_s)
    settings = {"data": source, "target": args.target, "n_train": len(train), "n_val": len(val),
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "hidden_dim": HIDDEN,
                "depth": DEPTH, "aggregation": args.aggregation, "ffn_hidden_layers": 1,
                "val_batch_size": VAL_BATCH, "seeds": args.seeds, "torch_threads": args.threads,
                "smoke": args.smoke, "cpu_count": os.cpu_count(), "machine": platform.platform(),
                "load_average_before": load_before, "load_average_after": os.getloadavg()}
    ratio = None if PEER_MISSING else {k: models["tasksim_ray"][k] / models["chemprop"][k]
                                       for k in ("molecules_per_s", "fit_molecules_per_s", "val_mae")}
    # the target: at least chemprop's speed, at a mean MAE within chemprop's seed-to-seed noise (1 std)
    met = None if ratio is None else bool(
        ratio["molecules_per_s"] >= 1.0 and models["tasksim_ray"]["val_mae"]
        <= models["chemprop"]["val_mae"] + max(models["chemprop"]["val_mae_std"], models["tasksim_ray"]["val_mae_std"]))
    result = {
        "measures": "training molecules/s (median over seeds) and best validation MAE (mean over seeds)",
        "versions": {"python": platform.python_version(), "tasksim_ray": tasksim_ray.__version__,
                     **{p: version(p) for p in ("torch", "torch-geometric", "rdkit", "numpy")},
                     **({} if PEER_MISSING else {p: version(p) for p in ("chemprop", "lightning")})},
        "settings": settings,
        "peer": PEER_MISSING or "chemprop",
        "models": models,
        "ratio_ours_over_chemprop": ratio,
        "target_met": met,
    }
    write_json(result, args.out)
    print_table(result, "Ha" if args.target in {"gap", "homo", "lumo"} else "target units")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
