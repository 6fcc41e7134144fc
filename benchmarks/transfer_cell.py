"""Transfer-experiment training steps on CPU vs CUDA: the same cells, the same seeds, one run.

Runs, on each available device, the training work a transfer study is made of, on the 600
QM9 molecules of ``tests/data`` (source task mu, target alpha): a source model, fine-tuning with
each strategy (full + L2-SP, last + BSS, head, gradual unfreezing with LLRD), budgeted
multi-task pretraining with the budget sampler, and a top-2 mixture of experts. It reports
seconds and test MAE per step and device, so CUDA placement bugs (a reference weight, a gate
or a sampler left on the CPU) show as an error and numerical drift as an MAE gap.

Run: ``python benchmarks/transfer_cell.py [--hidden 300] [--epochs 20]``; results go to
``benchmarks/results/transfer_cell.json`` (and ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasksim_ray.config import DataConfig, FinetuneConfig, ModelConfig, MoEConfig, RegularizerConfig
from tasksim_ray.data.molecules import load_moleculenet
from tasksim_ray.featurize.molecule import featurize_many
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.models.heads import mlp_head
from tasksim_ray.models.moe import MixtureOfExperts, initial_theta
from tasksim_ray.training.finetune import finetune_options, moe_options
from tasksim_ray.training.loop import FitOptions, fit, predict
from tasksim_ray.training.sampler import BudgetSampler

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "qm9_motse_600.csv"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, fn: Callable[[], float]) -> dict[str, float]:
    _sync(device)
    start = time.perf_counter()
    mae = fn()
    _sync(device)
    return {"seconds": round(time.perf_counter() - start, 3), "test_mae": round(float(mae), 5)}


def run(device: torch.device, hidden: int, epochs: int, n: int = 600) -> dict[str, dict[str, float]]:
    """Every step on ``device``; the first ``n`` molecules split 2/3 train, 1/6 validation, 1/6 test."""
    table = load_moleculenet(DataConfig(source="moleculenet", path=str(DATA), targets=["mu", "alpha"]))
    graphs, _ = featurize_many(table.frame["smiles"].tolist()[:n])
    mu, alpha = table.labels("mu")[:n], table.labels("alpha")[:n]
    idx = np.random.default_rng(0).permutation(len(graphs))
    n_tr, n_va = 2 * n // 3, n // 6
    tr, va, te = idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:]

    def sub(rows: np.ndarray) -> list:
        return [graphs[i] for i in rows]

    def test_mae(model: torch.nn.Module, y: np.ndarray, mean: float, std: float) -> float:
        return float(np.mean(np.abs(predict(model, sub(te), 256, device) * std + mean - y[te])))

    def new_model(n_tasks: int = 1) -> DMPNN:
        torch.manual_seed(0)
        return DMPNN(hidden_dim=hidden, ffn_hidden_dim=hidden, n_tasks=n_tasks).to(device)

    out: dict[str, dict[str, float]] = {}
    m_mu, s_mu = float(mu[tr].mean()), float(mu[tr].std())
    m_al, s_al = float(alpha[tr].mean()), float(alpha[tr].std())
    source = new_model()
    plain = FitOptions(epochs, None, 50, 1e-3)

    def fit_source() -> float:
        fit(source, sub(tr), mu[tr], sub(va), mu[va], plain, 0, m_mu, s_mu, device)
        return test_mae(source, mu, m_mu, s_mu)

    out["source (mu)"] = _timed(device, fit_source)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    strategies = {
        "scratch": (FinetuneConfig(max_epochs=epochs, patience=epochs), False),
        "full + L2-SP": (FinetuneConfig(max_epochs=epochs, patience=epochs,
                                        regularizer=RegularizerConfig(kind="l2sp", weight=0.01)), True),
        "last + BSS": (FinetuneConfig(strategy="last", max_epochs=epochs, patience=epochs,
                                      regularizer=RegularizerConfig(kind="bss", weight=0.001, bss_k=1)), True),
        "head": (FinetuneConfig(strategy="head", max_epochs=epochs, patience=epochs), True),
        "gradual + LLRD": (FinetuneConfig(gradual_unfreeze=2, llrd=0.5, max_epochs=epochs, patience=epochs), True),
    }
    for name, (cfg, pretrained) in strategies.items():
        model = new_model()
        if pretrained:
            model.load_state_dict(state)
            torch.manual_seed(1)
            model.reset_head(1)

        def tune(model: DMPNN = model, cfg: FinetuneConfig = cfg, pretrained: bool = pretrained) -> float:
            fit(model, sub(tr), alpha[tr], sub(va), alpha[va], finetune_options(model, cfg, pretrained), 0,
                m_al, s_al, device)
            return test_mae(model, alpha, m_al, s_al)

        out[f"finetune alpha: {name}"] = _timed(device, tune)

    def multitask() -> float:
        model = new_model(2)
        y = np.full((2 * n_tr, 2), np.nan)
        y[:n_tr, 0], y[n_tr:, 1] = mu[tr], alpha[tr]
        sampler = BudgetSampler([np.arange(n_tr), np.arange(n_tr, 2 * n_tr)], n_tr, seed=0)
        y_val = np.stack([mu[va], alpha[va]], 1)
        fit(model, sub(tr) + sub(tr), y, sub(va), y_val, FitOptions(epochs, None, 50, 1e-3, sampler=sampler), 0,
            np.array([m_mu, m_al]), np.array([s_mu, s_al]), device)
        return float(np.mean(np.abs(predict(model, sub(te), 256, device)[:, 1] * s_al + m_al - alpha[te])))

    out[f"multi-task (mu+alpha, {n_tr} x E)"] = _timed(device, multitask)

    def mixture() -> float:
        experts = [new_model(), new_model()]
        experts[0].load_state_dict(state)
        head = mlp_head(hidden, hidden, ModelConfig().ffn_layers, 0.0, 1)  # as transfer.cells builds it
        moe = MixtureOfExperts(initial_theta(2, "uniform", None, 0).to(device), 2, head, hidden,
                               experts=experts).to(device)
        opts = moe_options(moe, MoEConfig(k=2), epochs, epochs, 50)
        fit(moe, sub(tr), alpha[tr], sub(va), alpha[va], opts, 0, m_al, s_al, device)
        return test_mae(moe, alpha, m_al, s_al)

    out["MoE top-2 (alpha)"] = _timed(device, mixture)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="seconds: 120 molecules, hidden 16, 1 epoch")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: $OUT/transfer_cell.json, else benchmarks/results/)")
    args = parser.parse_args()
    n = 120 if args.smoke else 600
    if args.smoke:
        args.hidden, args.epochs = 16, 1
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, Any] = {"hidden": args.hidden, "epochs": args.epochs, "molecules": n, "smoke": args.smoke,
                               "torch": torch.__version__,
                               "host": platform.node(), "cpu_threads": torch.get_num_threads(),
                               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                               "load_avg": os.getloadavg()}
    for device in devices:
        results[device.type] = run(device, args.hidden, args.epochs, n)
    steps = list(results["cpu"])
    print(f"{'step':34s} " + " ".join(f"{d.type + ' s':>9s} {d.type + ' MAE':>10s}" for d in devices))
    for step in steps:
        print(f"{step:34s} " + " ".join(f"{results[d.type][step]['seconds']:9.2f} "
                                        f"{results[d.type][step]['test_mae']:10.4f}" for d in devices))
    text = json.dumps(results, indent=2)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    out = args.out or out_dir / "transfer_cell.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
