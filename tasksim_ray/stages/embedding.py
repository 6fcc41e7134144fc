"""Embedding stages: the probe set, per-task probe embeddings, and per-task dataset features.

Probe embeddings are cached per task by (model, probe set, layer), so adding a task to a study
embeds only that task. Dataset features (for CSI) embed each task's own training inputs with one
shared model.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasksim_ray.data import probes
from tasksim_ray.data.sizes import report_shortfall, was_set
from tasksim_ray.data.tasks import ID as TABLE_ID
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.embedding.service import (
    GRAPH,
    ID,
    embed_table,
    graph_table,
    load_embedding,
    read_embedded,
    save_embedding,
)
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.graphstore import graph_to_bytes, unpack_graphs
from tasksim_ray.infra.cache import Artifacts, code_version, is_complete, stable_hash, writing
from tasksim_ray.registry import FOUNDATION_MODELS
from tasksim_ray.stages import Run, Stage
from tasksim_ray.stages.data import task_rows
from tasksim_ray.training.pretrain import PretrainedModel


@dataclass(frozen=True)
class TaskEmbedding:
    task: str
    key: str
    path: Path

    def load(self) -> tuple[list[str], np.ndarray]:
        return load_embedding(self.path / "embeddings.parquet")


def stage_probe(run: Run, tasks: Stage | None, prep: Stage | None) -> Stage:
    """The probe set, keyed by its inputs, so a study that adds a task keeps its probes. Without a
    task table (published models) the probes must come from a file."""
    cfg = run.cfg
    if cfg.probe.source == "file":
        kind, inputs, ids = probes.read_probe_file(Path(cfg.probe.path or ""), cfg.probe.size, cfg.seed)
    elif tasks is None or prep is None:
        raise TasksimError("probe.source must be 'file' when the task models are published checkpoints")
    else:
        table = TaskTable.in_folder(tasks.path)
        test_rows = np.load(prep.path / "split.npz")["test"]
        inputs, ids = probes.holdout_probes(table, test_rows, cfg.probe.size, cfg.seed)
        kind = table.kind
    report_shortfall("probe.size", cfg.probe.size, len(inputs), f"probes ({cfg.probe.path or 'test split'})",
                     explicit=was_set(cfg.probe, "size"))

    def build(out: Path) -> dict[str, Any]:
        frame, report = graph_table(inputs, ids, kind, f"probe set {cfg.probe.path or 'holdout'}", cfg.data.graph)
        run.log("probe", report.summary("probe set"))
        probes.require_enough(frame, len(report.invalid_rows))
        with writing(out / "probe.parquet"):
            frame.to_parquet(out / "probe.parquet", index=False)
        return {"n_probes": len(frame), "invalid": len(report.invalid_rows), "kind": kind}

    parts = [cfg.probe.source, stable_hash(ids, inputs, length=32), code_version("featurize")]
    if kind == "crystal":
        parts.append(cfg.data.graph.model_dump())
    return run.stage("probe", parts, build)


def probe_labels(probe: Stage, tasks: Stage, names: list[str]) -> dict[str, np.ndarray]:
    """Task labels of the probe molecules, joined by molecule id (holdout probes come from the
    task table; a probe file has none)."""
    ids = pd.read_parquet(probe.path / "probe.parquet", columns=[ID])[ID].sort_values(kind="stable")
    frame = TaskTable.in_folder(tasks.path).frame.set_index(TABLE_ID)
    if not ids.isin(frame.index).all():
        return {}
    return {t: frame.loc[ids, t].to_numpy(dtype=np.float64) for t in names}


def stage_embed(run: Run, probe: Stage, models: dict[str, PretrainedModel]) -> dict[str, TaskEmbedding]:
    cfg = run.cfg
    layer = cfg.embed.layer
    store = Artifacts(run.artifacts / "embeddings", "embedding")
    out = {t: TaskEmbedding(t, k := store.key(m.directory.name, probe.key, layer), store.path(f"{t}-{k}"))
           for t, m in models.items()}
    missing = [t for t, e in out.items() if not is_complete(e.path)]
    with run.timed("embed", cached=not missing) as timing:
        if missing:
            run.log("embed", f"embedding {len(missing)} of {len(out)} tasks (the rest are cached)")
            with run.console.status(f"Ray Data: probe set through {len(missing)} task models on the hosts"), \
                    tempfile.TemporaryDirectory(dir=run.artifacts) as scratch:
                start, split = time.perf_counter(), {}
                embed_table(probe.path / "probe.parquet", {t: models[t].directory for t in missing},
                            cfg.embed, Path(scratch) / "raw", layer, run.hosts(len(models)), timings=split)
                timing["split_s"] = {k: round(v, 3) for k, v in split.items() if k.endswith("_s")}
                timing["host_seconds"] = split["host_seconds"]
                timing["host_nodes"] = len({h["node"] for h in split["hosts"]})
                if "host_startup" in split:
                    timing["host_startup_s"] = split["host_startup"]
                ids, embs = read_embedded(Path(scratch) / "raw", missing, layer)
                share = round((time.perf_counter() - start) / len(missing), 3)  # what each task's embedding cost
                for t in missing:
                    with store.build(out[t].path.name, task=t, layer=layer, probe=probe.key, seconds=share) as tmp:
                        save_embedding(tmp / "embeddings.parquet", ids, embs[t])
        else:
            run.log("embed", "all task embeddings cached")
    return out


def stage_dataset_features(run: Run, feats: Stage, models: dict[str, PretrainedModel]) -> Stage:
    """Each task's own training inputs (a seeded sample) embedded by one shared model, a task's model or
    a shipped foundation model such as CHGNet (whose node features suit crystals): per structure
    (``<task>__graph``) and/or per atom (``<task>__node``, ``<task>__groups``), as the metrics need."""
    from tasksim_ray.stages.published import stage_foundation_model

    settings = run.cfg.similarity.dataset_features
    levels = [lv for lv, need in (("graph", "dataset_features"), ("node", "node_features"))
              if need in run.cfg.similarity.needs()]
    shared = settings.model or next(iter(models))
    if shared in FOUNDATION_MODELS:
        shared_dir = stage_foundation_model(run, shared)
    elif shared in models:
        shared_dir = models[shared].directory
    else:
        raise TasksimError(f"similarity.dataset_features.model: '{shared}' is neither a task ({list(models)}) nor a "
                           f"foundation model ({FOUNDATION_MODELS.names()})")

    def build(out: Path) -> dict[str, Any]:
        rows = task_rows(feats)["positions"]
        graphs = unpack_graphs(torch.load(feats.path / "graphs.pt", weights_only=True))
        rng = np.random.default_rng(run.cfg.seed)
        ids, blobs = [], []
        have = {task: len(rows[task]["train"]) for task in models}
        report_shortfall("similarity.dataset_features.per_task", settings.per_task, have,
                         "training inputs per task", explicit=was_set(settings, "per_task"))
        for task in models:
            pos = np.array(rows[task]["train"], dtype=int)
            pick = np.sort(rng.choice(pos, size=min(settings.per_task, pos.size), replace=False))
            ids += [f"{task}|{p:09d}" for p in pick]
            blobs += [graph_to_bytes(graphs[p]) for p in pick]
        with writing(out / "inputs.parquet"):
            pd.DataFrame({ID: ids, GRAPH: blobs}).to_parquet(out / "inputs.parquet", index=False)
        arrays: dict[str, np.ndarray] = {}
        for level in levels:
            with run.console.status(f"Ray Data: every task's inputs through the '{shared}' model ({level} level)"):
                embed_table(out / "inputs.parquet", {"shared": shared_dir}, run.cfg.embed,
                            out / f"raw-{level}", level, run.hosts(len(models)))
            got_ids, embs = read_embedded(out / f"raw-{level}", ["shared"], level)
            owner = np.array([i.split("|")[0] for i in got_ids])
            for task in models:
                mine = np.flatnonzero(owner == task)
                if level == "node":
                    per_mol = [embs["shared"][i] for i in mine]
                    arrays[f"{task}__node"] = np.concatenate(per_mol)
                    arrays[f"{task}__groups"] = np.repeat(np.arange(len(per_mol)), [len(a) for a in per_mol])
                else:
                    arrays[f"{task}__graph"] = np.asarray(embs["shared"])[mine]
        with writing(out / "features.npz"):
            np.savez(out / "features.npz", **arrays)
        (out / "inputs.parquet").unlink()
        return {"shared_model": shared, "levels": levels}

    model_key = shared_dir.parent.name if shared in FOUNDATION_MODELS else shared_dir.name  # a stage key / a model key
    return run.stage("dataset_features", [model_key, feats.key, settings.model_dump(), levels,
                                          run.cfg.embed.batch_size, run.cfg.seed], build)
