"""Per-epoch seconds of the crystal adapters (CHGNet, MACE, ALIGNN) with and without the graph cache.

Each adapter trains (Adam, MSE on the target) for a few epochs over the same crystals, in batches,
once with ``graph_cache: 0`` (every forward builds its library's graphs, as before the cache) and
once with the default cache (epoch 1 builds them, later epochs reuse them). CHGNet is the frozen
universal model (the head trains); MACE and ALIGNN use the small settings of the adapter tests.

Data: the first ``--n`` rows of matbench_log_phonons from the shared data folder (``--data``).
Results go to ``benchmarks/results/graph_cache.json``.
Run: ``python benchmarks/graph_cache.py [--n 30] [--epochs 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Structure
from torch_geometric.data import Batch, Data

from tasksim_ray.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, n: int) -> tuple[list[Data], torch.Tensor]:
    table = json.loads(gzip.decompress(path.read_bytes()))
    rows = table["data"][:n]
    graphs = []
    for row in rows:
        s = Structure.from_dict(row["structure"])
        graphs.append(Data(z=torch.tensor(s.atomic_numbers), pos=torch.tensor(s.cart_coords, dtype=torch.float32),
                           cell=torch.tensor(s.lattice.matrix, dtype=torch.float32).unsqueeze(0), num_nodes=len(s)))
    y = torch.tensor([row["log(last phdos peak)"] for row in rows], dtype=torch.float32)
    return graphs, (y - y.mean()) / y.std()


def epoch_seconds(name: str, hparams: dict[str, Any], graphs: list[Data], y: torch.Tensor,
                  epochs: int, batch_size: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model(name, hparams).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for i in range(0, len(graphs), batch_size):
            batch = Batch.from_data_list(graphs[i:i + batch_size])
            optimizer.zero_grad()
            (model(batch).squeeze(1) - y[i:i + batch_size]).pow(2).mean().backward()
            optimizer.step()
        times.append(round(time.perf_counter() - start, 3))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "graph_cache.json")
    parser.add_argument("--smoke", action="store_true", help="seconds: 4 crystals, 2 epochs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.epochs, args.batch_size = 4, 2, 2
    torch.set_num_threads(args.threads)
    graphs, y = load(args.data / "crystals" / "moe_tasks" / "matbench_log_phonons.json.gz", args.n)
    elements = sorted({int(z) for g in graphs for z in g.z})
    adapters = {"chgnet": {}, "mace": {"atomic_numbers": elements, "num_channels": 16, "max_ell": 1,
                                       "radial_mlp": [16, 16]},
                "alignn": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 32, "embedding_features": 16}}
    results: dict[str, Any] = {"smoke": args.smoke, "crystals": len(graphs), "atoms": sum(g.num_nodes for g in graphs),
                               "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                               "machine": platform.processor() or platform.machine(), "adapters": {}}
    for name, hp in adapters.items():
        before = epoch_seconds(name, hp | {"graph_cache": 0}, graphs, y, args.epochs, args.batch_size)
        after = epoch_seconds(name, hp, graphs, y, args.epochs, args.batch_size)
        later = sum(after[1:]) / max(1, len(after) - 1)
        results["adapters"][name] = {"uncached_epoch_s": before, "cached_epoch_s": after,
                                     "speedup_after_first_epoch": round(sum(before[1:]) / max(1, len(before) - 1)
                                                                        / later, 2)}
        print(name, results["adapters"][name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
