"""The crystal mixture-of-experts study: STL vs TL vs MoE per task and published split seed.

Per task, one Ray task builds the CGCNN graphs and runs every extractor once through its frozen
layers (:func:`prepare_task`; both cached in the workdir, keyed by the files' fingerprints and the
graph settings). One cell = (task, seed, method) is then a Ray task of its own, and each finished
cell is written to its own JSON file keyed by everything it depends on, so a rerun skips finished
cells (and the preparation of tasks with none left) and a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch_geometric.data import Data

from tasksim_ray import __version__
from tasksim_ray.config import CrystalMoEConfig, PipelineConfig
from tasksim_ray.data.crystal_files import KNOWN_FILES, SPLIT_FILE, file_stem, load_moe_task
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.crystal import GraphSettings, graphs_from_structures
from tasksim_ray.featurize.graphstore import pack_graphs, unpack_graphs
from tasksim_ray.infra.cache import file_complete, publish_json, stable_hash
from tasksim_ray.infra.progress import Console
from tasksim_ray.models.cgcnn import CGCNN
from tasksim_ray.models.moe import initial_theta
from tasksim_ray.models.published import load_published
from tasksim_ray.training.loop import FitOptions, fit, predict
from tasksim_ray.transfer.crystal_moe_models import GatedExperts, extractor_features

Payload = dict[str, Any]


@dataclass(frozen=True)
class Experts:
    """Where the extractor files are (absolute, for the workers) and which ones the MoE mixes."""

    folder: Path
    moe: tuple[str, ...]


def _fingerprint(path: Path) -> list[Any]:
    """Name and size: stable across copies and machines (absolute paths and mtimes are not)."""
    return [path.name, path.stat().st_size]


def task_files(cfg: CrystalMoEConfig) -> list[Path]:
    """The task files to run, in config order (default: every known MoE task file in tasks_dir)."""
    folder = Path(cfg.tasks_dir)
    found = {file_stem(p): p for p in sorted(folder.glob("*.json*"))
             if (k := KNOWN_FILES.get(file_stem(p))) and k.split_key}
    if not found:
        raise TasksimError(f"crystal_moe.tasks_dir {folder}: no MoE task files (*.json.gz)")
    names = cfg.tasks or sorted(found)
    missing = [t for t in names if t not in found]
    if missing:
        raise TasksimError(f"crystal_moe.tasks: {missing} not in {folder}; found: {sorted(found)}")
    return [found[t] for t in names]


def expert_files(cfg: CrystalMoEConfig) -> tuple[list[Path], Path]:
    """(MoE experts, the TL extractor), checked to exist."""
    folder = Path(cfg.extractors_dir)
    names = cfg.experts or sorted(p.name for p in folder.glob("*.pth.tar"))
    paths = [folder / n for n in names] + [folder / cfg.tl_extractor]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not names:
        raise TasksimError(f"crystal_moe: extractor file(s) not found: {missing or [str(folder / '*.pth.tar')]}")
    return paths[:-1], paths[-1]


def _features_needed(cfg: CrystalMoEConfig) -> list[Path]:
    experts, tl = expert_files(cfg)
    wanted = (experts if "moe" in cfg.methods else []) + ([tl] if "tl" in cfg.methods else [])
    return sorted(set(wanted))


def _cached(path: Path, build: Any) -> dict[str, Any]:
    """``build()`` saved at ``path`` (atomically), or what is already there."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{np.random.randint(1 << 30)}")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def prepare_task(task: Path, splits_dir: Path, seeds: list[int], experts: list[Path], with_atoms: bool,
                 cache_dir: Path, num_threads: int = 1) -> Payload:
    """Labels, splits, graphs and each extractor's frozen features for one task (a Ray task body):
    ``pooled`` (n_graphs, experts, 64) always, ``h_in`` (n_atoms, experts, 64) if ``with_atoms``."""
    torch.set_num_threads(num_threads)
    ds = load_moe_task(task, splits_dir, seeds)
    target = KNOWN_FILES[ds.name].targets[0]
    settings = GraphSettings(**load_published(experts[0])[3].graph) if experts else GraphSettings()
    key = stable_hash(_fingerprint(task), asdict(settings))
    store = _cached(cache_dir / "graphs" / f"{ds.name}-{key}.pt", lambda: pack_graphs(
        graphs_from_structures(ds.structures, settings, where=task.name, row_ids=ds.ids)))
    payload: Payload = {"name": ds.name, "target": target, "units": ds.units[target], "y": ds.labels(target),
                        "splits": dict(zip(seeds, ds.splits or [])), "graphs": store,
                        "experts": [p.name for p in experts]}
    if experts:
        def build() -> dict[str, torch.Tensor]:
            graphs = unpack_graphs(store)
            parts = [extractor_features(load_published(p)[0], graphs) for p in experts]
            out = {"pooled": torch.stack([pooled for _, pooled in parts], dim=1)}
            return out | ({"h_in": torch.stack([atoms for atoms, _ in parts], dim=1)} if with_atoms else {})
        fkey = stable_hash(key, [_fingerprint(p) for p in experts], with_atoms)
        payload |= _cached(cache_dir / "features" / f"{ds.name}-{fkey}.pt", build)
    return payload


def with_atom_features(payload: Payload, cols: list[int]) -> list[Data]:
    """Graphs carrying the chosen experts' atom features entering their last convolution."""
    store, h_in = payload["graphs"], payload["h_in"][:, cols]
    ap = store["atom_ptr"].tolist()
    return [Data(edge_index=g.edge_index, edge_attr=g.edge_attr, h_in=h_in[ap[i]:ap[i + 1]], num_nodes=g.num_nodes)
            for i, g in enumerate(unpack_graphs(store))]


def _take(inputs: torch.Tensor | list[Data], rows: np.ndarray) -> torch.Tensor | list[Data]:
    return inputs[rows] if isinstance(inputs, torch.Tensor) else [inputs[i] for i in rows]


def _stl(payload: Payload, split: tuple, cfg: CrystalMoEConfig, seed: int, mean: float, std: float):
    """A CGCNN from scratch with the extractors' architecture and the published optimiser."""
    tr, va, te = split
    torch.manual_seed(seed)
    model = CGCNN(atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1)
    opt = (torch.optim.SGD(model.parameters(), cfg.stl_lr, momentum=cfg.stl_momentum) if cfg.stl_optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), cfg.stl_lr))
    opts = FitOptions(cfg.stl_epochs, cfg.patience, cfg.batch_size, make_optimizer=lambda _: opt,
                      schedule="cosine", eta_min=cfg.stl_min_lr, stage="crystal-stl")
    graphs = unpack_graphs(payload["graphs"])
    y = payload["y"]
    result = fit(model, [graphs[i] for i in tr], y[tr], [graphs[i] for i in va], y[va], opts, seed, mean, std)
    return model, result, predict(model, [graphs[i] for i in te], 256, torch.device("cpu"))


def _transfer(payload: Payload, split: tuple, names: list[str], cfg: CrystalMoEConfig, folder: Path,
              seed: int, mean: float, std: float):
    """TL (one expert) or MoE (gated experts): frozen extractors, new head, last conv per config."""
    tr, va, te = split
    cols = [payload["experts"].index(n) for n in names]
    torch.manual_seed(seed)
    theta = initial_theta(len(names), "uniform", None, seed)
    tails = None if cfg.freeze_last_conv else [load_published(folder / n)[0].convs[-1] for n in names]
    model = GatedExperts(len(names), cfg.k, theta, cfg.head_layers, tails)
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("tails.") and p.requires_grad],
               "lr": cfg.head_lr}]
    if tails is not None:
        groups.append({"params": list(model.tails.parameters()), "lr": cfg.expert_lr})
    opt = torch.optim.Adam(groups)
    penalty = (lambda z: cfg.penalty * model.penalty(cfg.penalty_on)) if len(names) > 1 and cfg.penalty else None
    opts = FitOptions(cfg.max_epochs, cfg.patience, cfg.batch_size, make_optimizer=lambda _: opt, penalty=penalty,
                      schedule="cosine", stage="crystal-moe")
    # frozen last convolutions: the pooled features are the inputs; else graphs with the atom features
    inputs = payload["pooled"][:, cols] if tails is None else with_atom_features(payload, cols)
    y = payload["y"]
    result = fit(model, _take(inputs, tr), y[tr], _take(inputs, va), y[va], opts, seed, mean, std)
    return model, result, predict(model, _take(inputs, te), 256, torch.device("cpu"))


def train_cell(payload: Payload, seed: int, method: str, cfg: CrystalMoEConfig,
               experts: Experts) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train and test one (task, seed, method) cell: (result, trained model). Labels are standardised
    with the train+val mean and std, as published; MAEs are in the task's units."""
    split = payload["splits"][seed]
    tr, va, te = split
    y = payload["y"]
    seen = y[np.concatenate([tr, va])]
    mean, std = float(np.mean(seen)), float(np.std(seen, ddof=1)) or 1.0
    if method == "stl":
        model, result, pred = _stl(payload, split, cfg, seed, mean, std)
    else:
        names = [cfg.tl_extractor] if method == "tl" else list(experts.moe)
        model, result, pred = _transfer(payload, split, names, cfg, experts.folder, seed, mean, std)
    out = {"task": payload["name"], "target": payload["target"], "units": payload["units"], "seed": seed,
           "method": method, "test_mae": float(np.mean(np.abs(pred * std + mean - y[te]))),
           "val_mae": result.best_val_mae, "best_epoch": result.best_epoch, "epochs": result.epochs_run,
           "seconds": round(result.seconds, 3), "s_per_epoch": result.seconds / max(result.epochs_run, 1),
           "n": [len(tr), len(va), len(te)], "freeze_last_conv": cfg.freeze_last_conv}
    if method == "moe":
        out["gates"] = dict(zip(experts.moe, model.gates().detach().tolist()))
    return out, model


def run_cell(payload: Payload, seed: int, method: str, cfg: CrystalMoEConfig, experts: Experts,
             num_threads: int = 1) -> dict[str, Any]:
    """Ray task body of one cell: its result only (the model stays on the worker)."""
    torch.set_num_threads(num_threads)
    return train_cell(payload, seed, method, cfg, experts)[0]


def cell_key(cfg: CrystalMoEConfig, task: Path, seed: int, method: str) -> str:
    """Everything a cell depends on: the task file, its seed's split file, the method's settings and
    (for TL/MoE) the extractor files."""
    experts, tl = expert_files(cfg)
    common = cfg.model_dump(include={"patience", "batch_size"})
    if method == "stl":
        settings: Any = [common, cfg.stl_epochs, cfg.model_dump(include={"stl_optimizer", "stl_lr", "stl_momentum",
                                                                         "stl_min_lr"})]
    else:
        files = [tl] if method == "tl" else experts
        settings = [common, cfg.model_dump(include={"max_epochs", "head_layers", "head_lr", "expert_lr",
                                                    "freeze_last_conv"} | ({"k", "penalty", "penalty_on"}
                                                                           if method == "moe" else set())),
                    [_fingerprint(p) for p in files]]
    split = Path(cfg.splits_dir) / SPLIT_FILE.format(seed=seed)
    return stable_hash("crystal-moe-cell", __version__, _fingerprint(task), _fingerprint(split), seed, method,
                       settings)


def run_study(pcfg: PipelineConfig, console: Console) -> list[dict[str, Any]]:
    """Every (task, seed, method) cell's result, from the cache or trained now on Ray."""
    cfg = pcfg.crystal_moe
    tasks, (experts, _) = task_files(cfg), expert_files(cfg)
    root = pcfg.workdir_path.resolve() / "crystal_moe"
    cells_dir = root / "cells"
    expert_set = Experts(Path(cfg.extractors_dir).resolve(), tuple(p.name for p in experts))
    prepare = ray.remote(prepare_task).options(num_cpus=cfg.num_cpus, max_retries=1)
    remote = ray.remote(run_cell).options(num_cpus=cfg.num_cpus, max_retries=1)
    threads = max(1, int(cfg.num_cpus))
    results: dict[str, dict[str, Any]] = {}
    pending: dict[ray.ObjectRef, tuple[str, str]] = {}
    needed = [p.resolve() for p in _features_needed(cfg)]
    with_atoms = not cfg.freeze_last_conv
    for task in tasks:
        todo = []
        for seed in cfg.seeds:
            for method in cfg.methods:
                key = cell_key(cfg, task, seed, method)
                if file_complete(cells_dir / f"{key}.json"):
                    results[key] = json.loads((cells_dir / f"{key}.json").read_text())
                else:
                    todo.append((key, seed, method))
        if not todo:
            continue
        payload = prepare.remote(task.resolve(), Path(cfg.splits_dir).resolve(), cfg.seeds, needed, with_atoms,
                                 root / "cache", threads)
        for key, seed, method in todo:
            ref = remote.remote(payload, seed, method, cfg, expert_set, threads)
            pending[ref] = (key, f"{file_stem(task)} seed {seed} {method}")
    console.print(f"\\[crystal-moe] {len(results)} cells cached, {len(pending)} to run")
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        key, name = pending.pop(ready)
        results[key] = ray.get(ready)
        publish_json(cells_dir / f"{key}.json", results[key])
        console.print(f"\\[crystal-moe] {name}: test MAE {results[key]['test_mae']:.4g} "
                      f"({results[key]['epochs']} epochs, {results[key]['seconds']:.0f} s); {len(pending)} left")
    return [results[cell_key(cfg, t, s, m)] for t in tasks for s in cfg.seeds for m in cfg.methods]
