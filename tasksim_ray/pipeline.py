"""The pipeline: tasks -> preprocess -> featurise -> pretrain -> probe -> embed -> similarity ->
select -> report.

Each stage's key hashes its own settings and its inputs' keys, so a rerun reuses every finished
stage and a changed setting reruns that stage and those after it only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasksim_ray import embed, probes
from tasksim_ray.cache import atomic_dir, file_fingerprint, is_complete, stable_hash, write_manifest
from tasksim_ray.config import PipelineConfig
from tasksim_ray.featurize import featurize_many, pack_graphs
from tasksim_ray.preprocess import filter_correlated, split_molecules
from tasksim_ray.pretrain import PretrainedModel, TaskData, pretrain_all
from tasksim_ray.progress import Console, task_progress
from tasksim_ray.report import write_report
from tasksim_ray.runtime import ensure_ray
from tasksim_ray.select import select_subset
from tasksim_ray.similarity import similarity_matrix
from tasksim_ray.tasks import TaskTable, load_tasks


@dataclass
class Stage:
    """A finished stage: where its artifact lives and the key that names it."""

    name: str
    key: str
    path: Path


@dataclass
class Run:
    cfg: PipelineConfig
    console: Console
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def artifacts(self) -> Path:
        return self.cfg.workdir_path / "artifacts"

    def stage(self, name: str, key_parts: Any, build: Callable[[Path], dict[str, Any]]) -> Stage:
        key = stable_hash(name, key_parts)
        path = self.artifacts / name / key
        start = time.perf_counter()
        if is_complete(path):
            self.console.print(f"[dim]\\[{name}] reusing cached artifact {key}[/dim]")
            self.timings[name] = {"seconds": 0.0, "cached": True}
        else:
            self.console.print(f"[bold]\\[{name}][/bold] running ({key})")
            with atomic_dir(path) as tmp:
                info = build(tmp)
                write_manifest(tmp, name, key, **info)
            self.timings[name] = {"seconds": round(time.perf_counter() - start, 2), "cached": False}
        return Stage(name, key, path)


@contextmanager
def _timed(run: Run, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    run.timings.setdefault(name, {"cached": False})["seconds"] = round(time.perf_counter() - start, 2)


def _data_fingerprint(cfg: PipelineConfig) -> Any:
    if cfg.data.source == "qm9pack":
        return {"qm9pack": probes.qm9pack_version()}
    p = Path(cfg.data.path or "")
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    return [file_fingerprint(f) for f in files if f.exists()]


def stage_tasks(run: Run) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        table = load_tasks(cfg.data)
        if cfg.tasks:
            table = table.subset(cfg.tasks)
        table.save(out / "tasks.parquet")
        return {"n_molecules": len(table.frame), "tasks": table.names}

    return run.stage("tasks", [cfg.data.model_dump(), cfg.tasks, _data_fingerprint(cfg)], build)


def stage_preprocess(run: Run, tasks: Stage) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.load(tasks.path / "tasks.parquet")
        split = split_molecules(len(table.frame), cfg.preprocess.split, cfg.preprocess.n_folds, cfg.seed)
        kept, dropped = filter_correlated(table.frame.iloc[split.train][table.names], cfg.preprocess.corr_threshold)
        np.savez(out / "split.npz", train=split.train, val=split.val, test=split.test, folds=split.folds)
        return {"kept": kept, "dropped": [asdict(d) for d in dropped],
                "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}

    return run.stage("preprocess", [tasks.key, cfg.preprocess.model_dump(), cfg.seed], build)


def _task_rows(labels: np.ndarray, order: np.ndarray, limit: int | None) -> np.ndarray:
    labelled = order[~np.isnan(labels[order])]
    return labelled[:limit] if limit else labelled


def stage_featurize(run: Run, tasks: Stage, prep: Stage) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        table = TaskTable.load(tasks.path / "tasks.parquet")
        kept = _manifest(prep)["kept"]
        split = np.load(prep.path / "split.npz")
        val_order = np.random.default_rng(cfg.seed).permutation(split["val"])
        rows_by_task = {t: {"train": _task_rows(table.labels(t), split["folds"][cfg.train.fold], cfg.train.n_train),
                            "val": _task_rows(table.labels(t), val_order, cfg.train.n_val)} for t in kept}
        rows = np.unique(np.concatenate([r for d in rows_by_task.values() for r in d.values()]))
        graphs, report = featurize_many(table.frame["smiles"].to_numpy()[rows].tolist())
        run.console.print(f"\\[featurize] {report.summary('training molecules')}")
        valid = {int(rows[i]): pos for pos, i in enumerate(i for i, g in enumerate(graphs) if g is not None)}
        torch.save(pack_graphs([g for g in graphs if g is not None]), out / "graphs.pt")
        positions = {t: {part: [valid[int(r)] for r in rs if int(r) in valid] for part, rs in d.items()}
                     for t, d in rows_by_task.items()}
        rows_kept = {t: {part: [int(r) for r in rs if int(r) in valid] for part, rs in d.items()}
                     for t, d in rows_by_task.items()}
        (out / "task_rows.json").write_text(json.dumps({"positions": positions, "rows": rows_kept}))
        return {"n_graphs": len(valid), "invalid": len(report.invalid_rows),
                "invalid_examples": report.invalid_examples}

    parts = [tasks.key, prep.key, cfg.train.n_train, cfg.train.n_val, cfg.train.fold, cfg.seed]
    return run.stage("featurize", parts, build)


def _manifest(stage: Stage) -> dict[str, Any]:
    return json.loads((stage.path / "manifest.json").read_text())


def stage_pretrain(run: Run, tasks: Stage, feats: Stage) -> dict[str, PretrainedModel]:
    cfg = run.cfg
    table = TaskTable.load(tasks.path / "tasks.parquet")
    units = {t.name: t.units for t in table.tasks}
    task_rows = json.loads((feats.path / "task_rows.json").read_text())
    data = []
    for task, pos in task_rows["positions"].items():
        labels = table.labels(task)
        rows = task_rows["rows"][task]
        data.append(TaskData(task, units[task], np.array(pos["train"], dtype=int), labels[rows["train"]],
                             np.array(pos["val"], dtype=int), labels[rows["val"]]))
    store = torch.load(feats.path / "graphs.pt", weights_only=True)
    cached: list[bool] = []
    with _timed(run, "pretrain"), task_progress(run.console, "pretrain", len(data)) as advance:
        def on_done(task: str, was_cached: bool) -> None:
            cached.append(was_cached)
            advance(task, was_cached)

        models = pretrain_all(store, data, cfg.model, cfg.train, cfg.seed, run.artifacts / "models",
                              feats.key, on_done=on_done)
    run.timings["pretrain"]["cached"] = all(cached)
    for task, m in models.items():
        run.console.print(f"\\[pretrain] {task}: val MAE {m.metrics['best_val_mae']:.4g} {units[task]} "
                          f"({m.metrics['epochs_run']} epochs, n_train {m.metrics['n_train']})")
    return models


def stage_probe(run: Run, tasks: Stage, prep: Stage) -> Stage:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        if cfg.probe.source == "file":
            smiles, ids = probes.read_probe_file(Path(cfg.probe.path or ""))
        else:
            table = TaskTable.load(tasks.path / "tasks.parquet")
            smiles, ids = probes.holdout_probes(table, np.load(prep.path / "split.npz")["test"],
                                                cfg.probe.size, cfg.seed)
        frame, report = embed.probe_table(smiles, ids)
        run.console.print(f"\\[probe] {report.summary('probe set')}")
        probes.require_enough(frame, report)
        frame.to_parquet(out / "probe.parquet", index=False)
        return {"n_probes": len(frame), "invalid": len(report.invalid_rows)}

    fp = file_fingerprint(cfg.probe.path) if cfg.probe.source == "file" and Path(cfg.probe.path or "").exists() else None
    return run.stage("probe", [cfg.probe.model_dump(), fp, prep.key, cfg.seed], build)


def stage_embed(run: Run, probe: Stage, models: dict[str, PretrainedModel]) -> Stage:
    cfg = run.cfg
    dirs = {t: m.directory for t, m in models.items()}

    def build(out: Path) -> dict[str, Any]:
        with run.console.status(f"embedding the probe set with {len(dirs)} task models (Ray Data)"):
            embed.embed_probes(probe.path / "probe.parquet", dirs, cfg.embed, out / "embeddings")
        return {"tasks": list(dirs)}

    parts = [probe.key, {t: d.name for t, d in dirs.items()}, cfg.embed.batch_size]
    return run.stage("embed", parts, build)


def stage_similarity(run: Run, emb: Stage, names: list[str]) -> tuple[Stage, np.ndarray]:
    cfg = run.cfg

    def build(out: Path) -> dict[str, Any]:
        _, embs = embed.read_embeddings(emb.path / "embeddings", names)
        sim = similarity_matrix(cfg.similarity.metric, embs)
        pd.DataFrame(sim, index=names, columns=names).to_csv(out / "similarity.csv")
        return {"metric": cfg.similarity.metric}

    st = run.stage("similarity", [emb.key, names, cfg.similarity.model_dump()], build)
    return st, pd.read_csv(st.path / "similarity.csv", index_col=0).loc[names, names].to_numpy()


STAGES = ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed", "similarity", "select", "report")


def run_pipeline(cfg: PipelineConfig, console: Console | None = None, until: str = "report") -> dict[str, Any]:
    """Run the stages up to ``until`` (reusing cached ones); the full run writes the report."""
    if until not in STAGES:
        raise ValueError(f"unknown stage '{until}'; stages: {STAGES}")
    stop = STAGES.index(until)
    run = Run(cfg, console or Console())
    done: dict[str, Any] = {"timings": run.timings}
    tasks = stage_tasks(run)
    prep = stage_preprocess(run, tasks) if stop >= 1 else None
    feats = stage_featurize(run, tasks, prep) if prep and stop >= 2 else None
    if feats is None:
        return done | {"stage": until, "artifact": str((prep or tasks).path)}
    ensure_ray(cfg.ray)
    models = stage_pretrain(run, tasks, feats) if stop >= 3 else {}
    probe = stage_probe(run, tasks, prep) if stop >= 4 else None
    emb = stage_embed(run, probe, models) if probe and stop >= 5 else None
    if emb is None or stop < 6:
        last = emb or probe or feats
        return done | {"stage": until, "artifact": str(last.path), "models": {t: str(m.directory) for t, m in models.items()}}
    names = list(models)
    sim_stage, sim = stage_similarity(run, emb, names)
    with _timed(run, "select"):
        selection = select_subset(names, sim, cfg.selection.threshold)
    if stop < 8:
        return done | {"stage": until, "names": names, "similarity": sim, "selection": asdict(selection)}
    table = TaskTable.load(tasks.path / "tasks.parquet")
    units = {t.name: t.units for t in table.tasks}
    report = {
        "name": cfg.name,
        "tasks": names,
        "units": {t: units[t] for t in names},
        "dropped_tasks": _manifest(prep)["dropped"],
        "similarity": {"metric": cfg.similarity.metric, "names": names, "matrix": sim.round(6).tolist()},
        "models": {t: {"units": units[t], **m.metrics} for t, m in models.items()},
        "probe": {"source": cfg.probe.source, "n_probes": _manifest(probe)["n_probes"]},
        "timings": run.timings,
        "config": cfg.model_dump(),
    }
    paths = write_report(cfg.workdir_path / "report", report, names, sim, selection)
    return report | {"paths": {k: str(v) for k, v in paths.items()}, "selection": asdict(selection)}
