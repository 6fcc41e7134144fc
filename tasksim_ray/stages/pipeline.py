"""The pipeline: tasks -> preprocess -> featurize -> pretrain -> probe -> embed -> similarity ->
select -> report. Each stage is cached (see ``stages``); this module only chains them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.infra.cache import publish_dir
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.similarity import METRICS
from tasksim_ray.similarity.select import Selection, select_subset
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import load_table, stage_featurize, stage_preprocess, stage_tasks
from tasksim_ray.stages.embedding import stage_dataset_features, stage_embed, stage_probe
from tasksim_ray.stages.published import stage_published
from tasksim_ray.stages.report import write_report
from tasksim_ray.stages.similarity import SimilarityResult, stage_similarity
from tasksim_ray.stages.training import stage_pretrain

STAGES = ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed", "similarity", "report")


def _report(run: Run, sim: SimilarityResult, selection: Selection, models: dict[str, Any],
            dropped: list[dict[str, Any]], n_probes: int, units: dict[str, str]) -> dict[str, Any]:
    cfg = run.cfg
    names = sim.names
    return {
        "name": cfg.name,
        "tasks": names,
        "units": {t: units[t] for t in names},
        "dropped_tasks": dropped,
        "similarity": {"metric": cfg.selection.metric, "names": names,
                       "matrix": sim.matrices[cfg.selection.metric].round(6).tolist()},
        "metrics": {m: {"kind": METRICS[m].kind, "title": METRICS[m].title, "matrix": v.round(6).tolist()}
                    for m, v in sim.matrices.items()},
        "rsa_bootstrap": ({k.removeprefix("rsa_"): v.round(6).tolist() for k, v in sim.ci.items()}
                          | {"level": cfg.similarity.bootstrap.level, "n_boot": cfg.similarity.bootstrap.n_boot})
        if sim.ci else None,
        "selection": asdict(selection),
        "models": {t: {"units": units[t], **m.metrics} for t, m in models.items()},
        "probe": {"source": cfg.probe.source, "n_probes": n_probes},
        "timings": run.timings,
        "config": cfg.model_dump(),
    }


def _finish(run: Run, result: dict[str, Any], sim: SimilarityResult, models: dict[str, Any],
            dropped: list[dict[str, Any]], n_probes: int, units: dict[str, str]) -> dict[str, Any]:
    """Select the subset and write the report (the last two stages of both kinds of run)."""
    cfg = run.cfg
    with run.timed("select"):
        selection = select_subset(sim.names, sim.matrices[cfg.selection.metric], cfg.selection.threshold)
    report = _report(run, sim, selection, models, dropped, n_probes, units)
    paths = write_report(cfg.workdir_path / "report", report, sim, selection)
    publish_dir(cfg.workdir_path / "report")  # to the shared store, when one is configured
    return result | report | {"paths": {k: str(v) for k, v in paths.items()},
                              "matrices": {k: np.asarray(v) for k, v in sim.matrices.items()}}


def run_published(run: Run, result: dict[str, Any], stop: int) -> dict[str, Any]:
    """Published checkpoints as the task models: probe -> embed -> similarity -> report."""
    ensure_ray(run.cfg.ray)
    models = stage_published(run)
    result["model_dirs"] = {t: str(m.directory) for t, m in models.items()}
    if stop <= STAGES.index("pretrain"):
        return result | {"artifact": str(next(iter(models.values())).directory.parent)}
    probe = stage_probe(run, None, None)
    if stop == STAGES.index("probe"):
        return result | {"artifact": str(probe.path)}
    embs = stage_embed(run, probe, models)
    if stop == STAGES.index("embed"):
        return result | {"artifact": str(run.artifacts / "embeddings")}
    sim = stage_similarity(run, embs, probe, None, None)
    units = {t: m.metrics.get("units", "") for t, m in models.items()}
    return _finish(run, result, sim, models, [], probe.manifest["n_probes"], units)


def run_pipeline(cfg: PipelineConfig, console: Console | None = None, until: str = "report") -> dict[str, Any]:
    """Run the stages up to ``until`` (reusing cached ones); the full run writes the report. With
    ``published.path`` set, the task models are those checkpoints and nothing is trained."""
    if until not in STAGES:
        raise ValueError(f"unknown stage '{until}'; stages: {STAGES}")
    stop = STAGES.index(until)
    run = Run(cfg, console or Console())
    result: dict[str, Any] = {"stage": until, "timings": run.timings}
    if cfg.published.path:
        return run_published(run, result, stop)
    tasks = stage_tasks(run)
    if stop == 0:
        return result | {"artifact": str(tasks.path)}
    prep = stage_preprocess(run, tasks)
    if stop == 1:
        return result | {"artifact": str(prep.path)}
    feats = stage_featurize(run, tasks, prep)
    if stop == 2:
        return result | {"artifact": str(feats.path)}
    ensure_ray(cfg.ray)
    models = stage_pretrain(run, tasks, feats)
    result["model_dirs"] = {t: str(m.directory) for t, m in models.items()}
    if stop == 3:
        return result | {"artifact": str(run.artifacts / "models")}
    probe = stage_probe(run, tasks, prep)
    if stop == 4:
        return result | {"artifact": str(probe.path)}
    embs = stage_embed(run, probe, models)
    if stop == 5:
        return result | {"artifact": str(run.artifacts / "embeddings")}
    dataset_features = stage_dataset_features(run, feats, models) if "csi" in cfg.similarity.metrics else None
    sim = stage_similarity(run, embs, probe, tasks, dataset_features)
    units = {t.name: t.units for t in load_table(tasks).tasks}
    return _finish(run, result, sim, models, prep.manifest["dropped"], probe.manifest["n_probes"], units)
