"""The transfer experiments' data: which molecules every cell trains, validates and tests on.

From the shared split: each target's learning-curve training rows are the first labelled
molecules of each fold's permutation of the training split (so size n is a prefix of size 2n);
validation and test rows are seeded samples of the validation and test splits; each task's
pretraining pool is drawn from the training split only. A target's validation and test molecules
therefore never enter any pretraining, and its own labels never enter its pretraining subset.
All these molecules are featurised once into one graph store.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasksim_ray.config import SplitConfig
from tasksim_ray.data.sizes import report_shortfall, was_set
from tasksim_ray.data.splits import load_splits
from tasksim_ray.data.tasks import ID, TaskTable, labelled_rows
from tasksim_ray.embedding.hosts import is_node_layer
from tasksim_ray.embedding.service import GRAPH, embed_table, read_embedded
from tasksim_ray.embedding.service import ID as GRAPH_ID
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.graphstore import graph_to_bytes, pack_graphs, unpack_graphs
from tasksim_ray.featurize.inputs import featurize_rows
from tasksim_ray.infra.cache import Artifacts, code_version, save_torch, stable_hash, write_json_atomic, writing
from tasksim_ray.models.published import write_published
from tasksim_ray.stages import Run, Stage
from tasksim_ray.training.subsets import SubsetData, TaskPool, combine_pools
from tasksim_ray.transfer.cells import CellData


def _labelled(labels: np.ndarray, order: np.ndarray, limit: int) -> list[int]:
    return labelled_rows(labels, order, limit).tolist()


def stage_transfer_data(run: Run, tasks: Stage, prep: Stage) -> Stage:
    cfg, tc = run.cfg, run.cfg.transfer
    kept = prep.manifest["kept"]
    targets = study_targets(run, prep)
    n_max = tc.sizes[-1]

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.in_folder(tasks.path)
        split = np.load(prep.path / "split.npz")
        val_order = np.random.default_rng(cfg.seed).permutation(split["val"])
        test_order = np.random.default_rng(cfg.seed + 1).permutation(split["test"])
        n_pre_val = cfg.train.n_val or len(val_order)
        pre_val = {t: _labelled(table.labels(t), val_order, n_pre_val) for t in kept}  # as the per-task models
        used = {r for v in pre_val.values() for r in v}
        rows: dict[str, dict[str, Any]] = {}
        for t in kept:
            lab = table.labels(t)
            # targets validate on molecules from the other end of the validation split, none of which
            # any pretraining (per-task or subset) validates on
            val = [r for r in _labelled(lab, val_order[::-1], tc.n_val + len(used)) if r not in used][:tc.n_val]
            rows[t] = {"pool": _labelled(lab, split["folds"][cfg.train.fold], tc.budget.pool_per_task),
                       "pretrain_val": pre_val[t], "val": val, "test": _labelled(lab, test_order, tc.n_test),
                       "folds": [_labelled(lab, split["folds"][f], n_max) for f in range(tc.folds)]
                       if t in targets else []}
        wanted = np.unique(np.concatenate([np.array(v, dtype=int) for d in rows.values()
                                           for v in [d["pool"], d["pretrain_val"], d["val"], d["test"], *d["folds"]]]))
        graphs, report = featurize_rows(table, wanted, run.cfg.data)
        run.log("transfer-data", report.summary(f"transfer {table.kind}s"))
        valid = wanted[[g is not None for g in graphs]]
        ok = set(valid.tolist())
        for t, d in rows.items():
            for part in ("pool", "pretrain_val", "val", "test"):
                d[part] = [r for r in d[part] if r in ok]
            d["folds"] = [[r for r in f if r in ok] for f in d["folds"]]
            report_shortfall("transfer.sizes", n_max, {f"{t} fold {f}": len(fold) for f, fold in enumerate(d["folds"])},
                             f"labelled training {table.kind}s with a graph per target and fold", defines_result=True)
            if len(d["val"]) < 2 or len(d["test"]) < 2:
                raise TasksimError(f"task '{t}': too few labelled validation/test molecules for transfer "
                                   "(validation molecules of the pretraining models are excluded)")
        save_torch(pack_graphs([g for g in graphs if g is not None]), out / "graphs.pt")
        with writing(out / "rows.npy"):
            np.save(out / "rows.npy", valid)
        write_json_atomic(out / "task_rows.json", rows)
        return {"n_graphs": int(len(valid)), "targets": targets, "sources": kept}

    parts = [tasks.key, prep.key, cfg.seed, cfg.train.fold, cfg.train.n_val, targets, tc.sizes[-1], tc.folds,
             tc.n_val, tc.n_test, tc.budget.pool_per_task, code_version("featurize")]
    return run.stage("transfer-data", parts, build)


def report_transfer_sizes(run: Run, tasks: Stage, prep: Stage) -> None:
    """Every learning-curve study's sizes against the data, before any model trains (``data.sizes``'
    rule): test, validation and pool caps the user set, and ``moe.k`` beyond a target's experts, are
    warnings; then the largest of ``transfer.sizes`` in each target's folds is an error (every curve,
    table and gain is labelled with it)."""
    cfg, tc = run.cfg, run.cfg.transfer
    table = TaskTable.in_folder(tasks.path)
    split = np.load(prep.path / "split.npz")
    targets, kept = study_targets(run, prep), prep.manifest["kept"]

    def labelled(task: str, rows: np.ndarray) -> int:
        return int(np.isfinite(table.labels(task)[rows]).sum())

    report_shortfall("transfer.n_test", tc.n_test, {t: labelled(t, split["test"]) for t in targets},
                     f"labelled test {table.kind}s per target", explicit=was_set(tc, "n_test"))
    report_shortfall("transfer.n_val", tc.n_val, {t: labelled(t, split["val"]) for t in targets},
                     f"labelled validation {table.kind}s per target", explicit=was_set(tc, "n_val"))
    report_shortfall("transfer.budget.pool_per_task", tc.budget.pool_per_task,
                     {t: labelled(t, split["folds"][cfg.train.fold]) for t in kept},
                     f"labelled {table.kind}s in a task's pretraining pool",
                     explicit=was_set(tc.budget, "pool_per_task"))
    report_shortfall("transfer.moe.k", tc.moe.k, len(kept) - 1, "experts (the other tasks' models) per target",
                     explicit=was_set(tc.moe, "k"))
    pools = {s: min(tc.budget.pool_per_task, labelled(s, split["folds"][cfg.train.fold]))
             for s in tc.ptft.pt_sources if s in kept}
    if pools:  # the PT/FT sweep's sizes label its curves as the learning-curve sizes do theirs
        report_shortfall("transfer.ptft.pt_sizes", max(tc.ptft.pt_sizes), pools,
                         f"{table.kind}s in a source's pretraining pool (transfer.budget.pool_per_task caps it)",
                         defines_result=True)
    report_shortfall("transfer.sizes", tc.sizes[-1],
                     {f"{t} fold {f}": labelled(t, split["folds"][f]) for t in targets for f in range(tc.folds)},
                     f"labelled training {table.kind}s per target and fold", defines_result=True)


def study_targets(run: Run, prep: Stage) -> list[str]:
    kept = prep.manifest["kept"]
    targets = run.cfg.transfer.tasks or kept
    unknown = [t for t in targets if t not in kept]
    if unknown:
        raise TasksimError(f"transfer.tasks: {unknown} not among the kept tasks {kept}")
    return list(targets)


@dataclass
class TransferData:
    """Typed access to the stage's rows and labels: cells and pretraining subsets."""

    stage: Stage
    tasks_key: str
    table: TaskTable
    rows: dict[str, dict[str, Any]]
    store_rows: np.ndarray
    _by_input: dict[str, pd.Series] = field(default_factory=dict, repr=False)  # source labels by input

    @classmethod
    def load(cls, stage: Stage, tasks: Stage) -> TransferData:
        rows = json.loads((stage.path / "task_rows.json").read_text())
        return cls(stage, tasks.key, TaskTable.in_folder(tasks.path), rows,
                   np.load(stage.path / "rows.npy"))

    @property
    def targets(self) -> list[str]:
        return self.stage.manifest["targets"]

    @property
    def sources(self) -> list[str]:
        return self.stage.manifest["sources"]

    def store(self) -> dict[str, torch.Tensor]:
        return torch.load(self.stage.path / "graphs.pt", weights_only=True)

    def units(self, task: str) -> str:
        return next(t.units for t in self.table.tasks if t.name == task)

    def _pos(self, rows: list[int]) -> np.ndarray:
        return np.searchsorted(self.store_rows, np.array(rows, dtype=int))

    def cell(self, target: str, fold: int, size: int) -> CellData:
        d, lab = self.rows[target], self.table.labels(target)
        train = d["folds"][fold][:size]
        key = self.table.fingerprint(target, train, d["val"], d["test"])
        return CellData(target, fold, size, self._pos(train), lab[train], self._pos(d["val"]), lab[d["val"]],
                        self._pos(d["test"]), lab[d["test"]], key)

    def label_correlation(self, target: str, source: str, min_shared: int = 10) -> float:
        """Pearson r between the two tasks' labels on the target's own training inputs (fold 0, the
        labels a user has) that the source also labels, matched by input; NaN under ``min_shared``."""
        rows = self.rows[target]["folds"][0]
        if source not in self._by_input:  # once per source, not once per pair
            labels = pd.Series(self.table.labels(source), index=self.table.inputs()).dropna()
            self._by_input[source] = labels.groupby(level=0).mean()
        theirs = self._by_input[source].reindex(self.table.inputs()[rows]).to_numpy()
        mine = self.table.labels(target)[rows]
        shared = np.isfinite(theirs) & np.isfinite(mine)
        if shared.sum() < min_shared or np.ptp(theirs[shared]) == 0 or np.ptp(mine[shared]) == 0:
            return float("nan")
        return float(np.corrcoef(mine[shared], theirs[shared])[0, 1])

    def pool(self, task: str) -> TaskPool:
        d, lab = self.rows[task], self.table.labels(task)
        return TaskPool(task, d["pool"], self._pos(d["pool"]), lab[d["pool"]], d["pretrain_val"],
                        self._pos(d["pretrain_val"]), lab[d["pretrain_val"]])

    def subset(self, tasks: list[str]) -> SubsetData:
        """Pretraining data of ``tasks``, validated on the per-task models' validation molecules."""
        key = stable_hash(*[self.table.fingerprint(t, self.rows[t]["pool"], self.rows[t]["pretrain_val"])
                            for t in tasks])
        return combine_pools(key, [self.pool(t) for t in tasks])


def split_rows(table: TaskTable, task: str, split: SplitConfig) -> list[list[list[int]]]:
    """Per split seed, the task's (train, val, test) table rows (``data.split``: published files, a
    split column or file, or seeded random); every part needs at least two labelled rows."""
    out = [[p.tolist() for p in parts] for parts in load_splits(split, table, task)]
    for seed, parts in zip(split.seeds, out):
        if min(len(p) for p in parts) < 2:
            raise TasksimError(f"task '{task}' split seed {seed}: sizes {[len(p) for p in parts]}; "
                               "every part needs at least 2 labelled rows")
    return out


def stage_split_data(run: Run, tasks: Stage) -> Stage:
    """The methods study's rows (per task and split seed) and the graphs of all of them."""
    tc = run.cfg.transfer

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.in_folder(tasks.path)
        targets = tc.tasks or table.names
        unknown = [t for t in targets if t not in table.names]
        if unknown:
            raise TasksimError(f"transfer.tasks: {unknown} not among the tasks {table.names}")
        rows = {t: split_rows(table, t, run.cfg.data.split) for t in targets}
        wanted = np.unique(np.concatenate([np.array(p, dtype=int) for v in rows.values() for s in v for p in s]))
        graphs, report = featurize_rows(table, wanted, run.cfg.data)
        run.log("transfer-data", report.summary(f"transfer {table.kind}s"))
        if any(g is None for g in graphs):  # dropping a row would shift every published split position
            bad = table.frame[ID].to_numpy()[wanted[[g is None for g in graphs]][0]]
            raise TasksimError(f"{run.cfg.data.path}: row {bad}: no graph; the methods study needs every split row")
        save_torch(pack_graphs(graphs), out / "graphs.pt")
        with writing(out / "rows.npy"):
            np.save(out / "rows.npy", wanted)
        write_json_atomic(out / "task_rows.json", {t: {"splits": v} for t, v in rows.items()})
        return {"n_graphs": int(len(wanted)), "targets": targets, "sources": targets}

    parts = [tasks.key, "methods", tc.tasks, run.cfg.data.split.model_dump(), run.cfg.data.graph.model_dump(),
             code_version("featurize")]
    return run.stage("transfer-split-data", parts, build)


def published_model_dirs(run: Run, files: list[Path]) -> dict[Path, Path]:
    """Each published extractor file as a model folder (cached), the form the model hosts load."""
    store = Artifacts(run.artifacts / "published-models", "published-model")
    out = {}
    for f in files:
        key = store.key(f.name, f.stat().st_size)
        out[f] = store.path(key) if store.complete(key) else write_published(f, store.path(key))
    return out


def _on_hosts(run: Run, graphs: list, layers: dict[str, dict[Path, Path]]) -> dict[str, dict[Path, torch.Tensor]]:
    """Per layer, each of its extractors' features of ``graphs`` from the run's model hosts (the
    graphs serialised once; per layer one pass, every extractor on each batch): (n_graphs, d) for a
    graph layer, the graphs' atoms stacked in order, (n_atoms, d), for a node layer."""
    out: dict[str, dict[Path, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory(dir=run.artifacts) as scratch:
        table = Path(scratch) / "graphs.parquet"
        ids = [f"{i:09d}" for i in range(len(graphs))]
        with writing(table):
            pd.DataFrame({GRAPH_ID: ids, GRAPH: [graph_to_bytes(g) for g in graphs]}).to_parquet(table, index=False)
        for i, (layer, folders) in enumerate(layers.items()):
            names = {f: f.name for f in folders}
            if folders:
                embed_table(table, {names[f]: d for f, d in folders.items()}, run.cfg.embed, Path(scratch) / f"out{i}",
                            layer, run.hosts(len(folders)))
                got_ids, embs = read_embedded(Path(scratch) / f"out{i}", list(names.values()), layer)
                assert got_ids == ids
            stack = np.concatenate if is_node_layer(layer) else np.asarray
            out[layer] = {f: torch.from_numpy(stack(embs[names[f]])) for f in folders}
    return out


def expert_features(run: Run, data: Stage, task: str, positions: np.ndarray, extractors: list[Path],
                    with_atoms: set[Path]) -> dict[Path, dict[str, torch.Tensor]]:
    """Each published extractor's frozen features of one task's graphs, cached per (task, extractor),
    computed on the run's model hosts for every missing extractor in one pass: ``pooled``
    (n_graphs, d), and, when the extractor's last layer trains, ``h_in`` (n_atoms, d), the atom
    features entering it."""
    store = Artifacts(run.artifacts / "expert-features", "expert-features")
    keys = {f: store.key(data.key, task, [f.name, f.stat().st_size], f in with_atoms)
            for f in extractors}
    missing = [f for f in extractors if not store.complete(keys[f])]
    if missing:
        run.log("transfer-data", f"{task}: frozen features of {len(missing)} extractors on the model hosts")
        graphs = unpack_graphs(torch.load(data.path / "graphs.pt", weights_only=True))
        mine = [graphs[i] for i in positions]
        folders = published_model_dirs(run, missing)
        got = _on_hosts(run, mine, {"graph": folders,
                                    "node:last_input": {f: d for f, d in folders.items() if f in with_atoms}})
        pooled, atoms = got["graph"], got["node:last_input"]
        for f in missing:
            value = {"pooled": pooled[f]} | ({"h_in": atoms[f]} if f in atoms else {})
            with store.build(keys[f], task=task, extractor=f.name) as tmp:
                save_torch(value, tmp / "features.pt")
    return {f: torch.load(store.path(keys[f]) / "features.pt", weights_only=True) for f in extractors}


@dataclass
class SplitData:
    """The methods study's cells: each task's rows per split seed, on its whole training split."""

    stage: Stage
    table: TaskTable
    rows: dict[str, dict[str, Any]]
    store_rows: np.ndarray
    standardize: str
    mode: str = "auto"  # transfer.objective

    @classmethod
    def load(cls, stage: Stage, tasks: Stage, standardize: str, objective: str = "auto") -> SplitData:
        return cls(stage, TaskTable.in_folder(tasks.path), json.loads((stage.path / "task_rows.json").read_text()),
                   np.load(stage.path / "rows.npy"), standardize, objective)

    targets = TransferData.targets
    sources = TransferData.sources
    store = TransferData.store
    units = TransferData.units
    _pos = TransferData._pos

    def positions(self, task: str) -> np.ndarray:
        """Store positions of every row the task uses, sorted."""
        return self._pos(sorted({r for s in self.rows[task]["splits"] for p in s for r in p}))

    def objective(self, target: str) -> str:
        """``binary`` for a target whose labels are all 0 or 1 (or every target, ``transfer.objective:
        binary``, which refuses other labels in one line), else ``regression``."""
        lab = self.table.labels(target)
        lab = lab[~np.isnan(lab)]
        zero_one = bool(len(lab)) and bool(np.isin(lab, (0.0, 1.0)).all())
        if self.mode == "binary" and not zero_one:
            raise TasksimError(f"transfer.objective binary: task '{target}' has labels other than 0 and 1")
        return "binary" if (self.mode == "binary" or (self.mode == "auto" and zero_one)) else "regression"

    def cell(self, target: str, index: int, seed: int) -> CellData:
        tr, va, te = self.rows[target]["splits"][index]
        lab = self.table.labels(target)
        key = self.table.fingerprint(target, tr, va, te)
        return CellData(target, seed, None, self._pos(tr), lab[tr], self._pos(va), lab[va], self._pos(te), lab[te],
                        key, seed=seed, standardize=self.standardize,  # type: ignore[arg-type]
                        objective=self.objective(target))  # type: ignore[arg-type]
