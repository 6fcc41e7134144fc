"""Data stages: load tasks, preprocess (target filter, split, folds), featurise training molecules."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.data import probes
from tasksim_ray.data.binary import derive_binary
from tasksim_ray.data.outliers import handle_outliers
from tasksim_ray.data.preprocess import filter_correlated, given_split, split_molecules
from tasksim_ray.data.sizes import report_shortfall
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.tasks import TABLE_FILE, TaskTable, check_links, check_table, labelled_rows
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.graphstore import pack_graphs
from tasksim_ray.featurize.inputs import featurize_rows
from tasksim_ray.infra.cache import file_fingerprint, save_torch, write_json_atomic, writing
from tasksim_ray.stages import Run, Stage


def _data_fingerprint(run: Run) -> Any:
    data = run.cfg.data
    if data.source == "qm9pack":
        return {"qm9pack": probes.qm9pack_version()}
    p = Path(data.path or "")
    if p.is_dir():
        check_links(p)  # every data folder, whichever loader reads it, before anything runs
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    return [file_fingerprint(f) for f in files if f.exists()]


def stage_tasks(run: Run) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        table, derived = derive_binary(load_tasks(cfg.data), cfg.data.binary)
        if cfg.tasks:
            table = table.subset(cfg.tasks)
        check_table(table)
        table, lines = handle_outliers(table, cfg.data.outliers, cfg.data.outlier_z)
        check_table(table)  # a task left with too few labels after a drop
        table.save(out / TABLE_FILE)
        return {"n_molecules": len(table.frame), "tasks": table.names, "outliers": lines, "binary": derived}

    # splits are not the table; the outlier keys only where they change it (older tables keep their keys)
    skip = ({"split"} | ({"outliers", "outlier_z"} if cfg.data.outliers == "keep" else set())
            | (set() if cfg.data.binary else {"binary"}))
    key = [cfg.data.model_dump(exclude=skip), cfg.tasks, _data_fingerprint(run)]
    stage = run.stage("tasks", key, build)
    for t in TaskTable.read_tasks(stage.path / TABLE_FILE):  # cached or not: say which column is which task
        run.console.print(f"tasks: {Path(t.source).name} column '{t.column}' -> task '{t.name}' "
                          f"({t.units or 'no units'})", highlight=False, markup=False)
    for line in stage.manifest.get("binary", []):
        run.console.print(line, highlight=False, markup=False)
    lines = stage.manifest.get("outliers")
    if lines is None:  # a table cached before the check: check it now (it only reads)
        lines = handle_outliers(TaskTable.in_folder(stage.path), "keep", cfg.data.outlier_z)[1]
    for line in lines:  # one 'warning:' line each on stderr, as every library warning
        logging.getLogger("tasksim_ray.outliers").warning(line)
    return stage


def stage_preprocess(run: Run, tasks: Stage) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.in_folder(tasks.path)
        if cfg.data.split.kind == "random":
            split = split_molecules(len(table.frame), cfg.preprocess.split, cfg.preprocess.n_folds, cfg.seed)
        else:
            split = given_split(cfg.data.split, table, cfg.preprocess.n_folds, cfg.seed)
        kept, dropped = filter_correlated(table.frame.iloc[split.train][table.names], cfg.preprocess.corr_threshold)
        with writing(out / "split.npz"):
            np.savez(out / "split.npz", train=split.train, val=split.val, test=split.test, folds=split.folds)
        return {"kept": kept, "dropped": [asdict(d) for d in dropped],
                "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}

    given = [] if cfg.data.split.kind == "random" else [cfg.data.split.model_dump()]
    return run.stage("preprocess", [tasks.key, cfg.preprocess.model_dump(), cfg.seed, *given], build)


def report_pretrain_sizes(run: Run, tasks: Stage, prep: Stage) -> None:
    """``train.n_train`` / ``train.n_val`` beyond a task's labelled molecules in its split: a warning
    (the model trains on what there is; ``data.sizes``' rule), on every run, cached or not."""
    t = run.cfg.train
    asked = {"n_train": t.n_train, "n_val": t.n_val}
    if not any(asked.values()):
        return
    table = TaskTable.in_folder(tasks.path)
    split = np.load(prep.path / "split.npz")
    parts = {"n_train": (split["folds"][t.fold], f"labelled training {table.kind}s per task"),
             "n_val": (split["val"], f"labelled validation {table.kind}s per task")}
    for key, n in asked.items():
        if n:
            rows, what = parts[key]
            counts = {task: int(np.isfinite(table.labels(task)[rows]).sum()) for task in prep.manifest["kept"]}
            report_shortfall(f"train.{key}", n, counts, what)


def stage_featurize(run: Run, tasks: Stage, prep: Stage) -> Stage:
    """Graphs of every molecule some task trains or validates on (once, shared by all tasks)."""
    cfg = run.cfg
    report_pretrain_sizes(run, tasks, prep)

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.in_folder(tasks.path)
        split = np.load(prep.path / "split.npz")
        val_order = np.random.default_rng(cfg.seed).permutation(split["val"])
        rows_by_task = {t: {"train": labelled_rows(table.labels(t), split["folds"][cfg.train.fold], cfg.train.n_train),
                            "val": labelled_rows(table.labels(t), val_order, cfg.train.n_val)}
                        for t in prep.manifest["kept"]}
        rows = np.unique(np.concatenate([r for d in rows_by_task.values() for r in d.values()]))
        graphs, report = featurize_rows(table, rows, run.cfg.data)
        run.log("featurize", report.summary(f"training {table.kind}s"))
        for t, parts in rows_by_task.items():
            if not any(graphs[int(np.searchsorted(rows, r))] is not None for r in parts["train"]):
                raise TasksimError(f"{cfg.data.path or cfg.data.source}: task '{t}' has no valid "
                                   f"{table.kind} to train on ({report.summary(table.kind + 's')})")
        valid = {int(rows[i]): pos for pos, i in enumerate(i for i, g in enumerate(graphs) if g is not None)}
        save_torch(pack_graphs([g for g in graphs if g is not None]), out / "graphs.pt")
        positions = {t: {part: [valid[int(r)] for r in rs if int(r) in valid] for part, rs in d.items()}
                     for t, d in rows_by_task.items()}
        rows_kept = {t: {part: [int(r) for r in rs if int(r) in valid] for part, rs in d.items()}
                     for t, d in rows_by_task.items()}
        write_json_atomic(out / "task_rows.json", {"positions": positions, "rows": rows_kept})
        return {"n_graphs": len(valid), "invalid": len(report.invalid_rows),
                "invalid_examples": report.invalid_examples}

    parts = [tasks.key, prep.key, cfg.train.n_train, cfg.train.n_val, cfg.train.fold, cfg.seed]
    return run.stage("featurize", parts, build)


def task_rows(feats: Stage) -> dict[str, Any]:
    return json.loads((feats.path / "task_rows.json").read_text())
