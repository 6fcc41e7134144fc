"""The pipeline: tasks -> preprocess -> featurize -> pretrain -> probe -> embed -> similarity ->
select -> report. Each stage is cached (see ``stages``); this module only chains them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.infra.cache import publish_dir, read_manifest
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.provenance import record_run
from tasksim_ray.similarity import METRICS
from tasksim_ray.similarity.select import Selection, select_subset
from tasksim_ray.stages import Run, Stage
from tasksim_ray.stages.data import stage_featurize, stage_preprocess, stage_tasks
from tasksim_ray.stages.embedding import (
    TaskEmbedding,
    probe_labels,
    stage_dataset_features,
    stage_embed,
    stage_probe,
)
from tasksim_ray.stages.preflight import check_comparable, check_probe_labels, estimated_work
from tasksim_ray.stages.published import stage_published
from tasksim_ray.stages.report import write_report
from tasksim_ray.stages.similarity import INTERVAL_PARTS, SimilarityResult, stage_similarity
from tasksim_ray.stages.training import stage_pretrain
from tasksim_ray.training.pretrain import PretrainedModel

STAGES = ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed", "similarity", "report")


@dataclass
class PipelineResult:
    """What a run produced, typed, so transfer and search read it without rerunning a stage.

    A run stopped before ``report`` fills what it reached: ``artifact`` is the last stage's
    folder; ``tasks_stage``/``preprocess_stage`` are None for published checkpoints."""

    stage: str  # the stage the run stopped after
    timings: dict[str, dict[str, Any]]
    tasks_stage: Stage | None = None
    preprocess_stage: Stage | None = None
    artifact: Path | None = None
    model_dirs: dict[str, Path] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: units and training metrics
    tasks: list[str] = field(default_factory=list)  # the compared tasks, in matrix order
    units: dict[str, str] = field(default_factory=dict)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # metric -> similarity | distance | score
    metric: str = ""  # the selection metric
    selection: Selection | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)  # report files
    similarity_seconds: float = float("nan")  # measured cost of the similarities: embedding + metrics

    @property
    def similarity(self) -> np.ndarray:
        """The matrix the subset was selected on."""
        return self.matrices[self.metric]


def _report(run: Run, sim: SimilarityResult, selection: Selection, result: PipelineResult,
            n_probes: int) -> dict[str, Any]:
    cfg = run.cfg
    names = sim.names
    return {
        "name": cfg.name,
        "tasks": names,
        "units": {t: result.units[t] for t in names},
        "dropped_tasks": result.dropped,
        "similarity": {"metric": cfg.selection.metric, "names": names,
                       "matrix": sim.matrices[cfg.selection.metric].round(6).tolist()},
        "metrics": {m: {"kind": METRICS[m].kind, "title": METRICS[m].title, "matrix": v.round(6).tolist()}
                    for m, v in sim.matrices.items()},
        "intervals": {m: {part: sim.ci[f"{m}_{part}"].round(6).tolist() for part in INTERVAL_PARTS}
                      | {"level": cfg.similarity.bootstrap.level, "n_boot": cfg.similarity.bootstrap.n_boot}
                      for m in sim.matrices if f"{m}_lower" in sim.ci},
        "selection": asdict(selection),
        "models": result.models,
        "probe": {"source": cfg.probe.source, "n_probes": n_probes},
        "timings": run.timings,
        "config": cfg.model_dump(),
    }


def _finish(run: Run, result: PipelineResult, sim: SimilarityResult, n_probes: int) -> PipelineResult:
    """Select the subset and write the report (the last two stages of both kinds of run)."""
    cfg = run.cfg
    with run.timed("select"):
        selection = select_subset(sim.names, sim.matrices[cfg.selection.metric], cfg.selection.threshold)
    report = _report(run, sim, selection, result, n_probes)
    report["run"] = record_run(cfg.workdir_path / "report", cfg.model_dump(mode="json"), run.started)
    paths = write_report(cfg.workdir_path / "report", report, sim, selection)
    publish_dir(cfg.workdir_path / "report")  # to the shared store, when one is configured
    result.tasks, result.units = list(sim.names), report["units"]
    result.matrices = {k: np.asarray(v) for k, v in sim.matrices.items()}
    result.kinds = {m: METRICS[m].kind for m in sim.matrices}
    result.metric, result.selection = cfg.selection.metric, selection
    result.paths = {k: Path(v) for k, v in paths.items()}
    return result


def similarity_cost(embs: dict[str, TaskEmbedding], sim: Stage, dataset_features: Stage | None) -> float:
    """Seconds the similarities took when they were computed (read back from their artifacts, so
    a cached run reports them too): each task's share of embedding the probe set, plus the metrics."""
    stages = [sim, *([dataset_features] if dataset_features else [])]
    parts = [read_manifest(e.path).get("seconds") for e in embs.values()] + \
        [s.manifest.get("build_seconds") for s in stages]
    return float(sum(parts)) if all(p is not None for p in parts) else float("nan")


def _with_models(result: PipelineResult, models: dict[str, PretrainedModel], units: dict[str, str]) -> None:
    result.model_dirs = {t: m.directory for t, m in models.items()}
    result.models = {t: {"units": units.get(t, ""), **m.metrics} for t, m in models.items()}
    result.tasks, result.units = list(models), {t: units.get(t, "") for t in models}


def run_published(run: Run, result: PipelineResult, stop: int) -> PipelineResult:
    """Published checkpoints as the task models: probe -> embed -> similarity -> report."""
    run.start_ray()
    models = stage_published(run)
    units = {t: m.metrics.get("units", "") for t, m in models.items()}
    _with_models(result, models, units)
    if stop <= STAGES.index("pretrain"):
        result.artifact = next(iter(models.values())).directory.parent
        return result
    probe = stage_probe(run, None, None)
    if stop == STAGES.index("probe"):
        result.artifact = probe.path
        return result
    embs = stage_embed(run, probe, models)
    if stop == STAGES.index("embed"):
        result.artifact = run.artifacts / "embeddings"
        return result
    sim = stage_similarity(run, embs, probe, None, None)
    result.similarity_seconds = similarity_cost(embs, sim.stage, None)
    return _finish(run, result, sim, probe.manifest["n_probes"])


def run_pipeline(cfg: PipelineConfig, console: Console | None = None, until: str = "report") -> PipelineResult:
    """Run the stages up to ``until`` (reusing cached ones); the full run writes the report. With
    ``published.path`` set, the task models are those checkpoints and nothing is trained."""
    if until not in STAGES:
        raise ValueError(f"unknown stage '{until}'; stages: {STAGES}")
    stop = STAGES.index(until)
    run = Run(cfg, console or Console())  # checks the config first
    result = PipelineResult(until, run.timings)
    if cfg.published.path:
        return run_published(run, result, stop)
    tasks = result.tasks_stage = stage_tasks(run)
    if stop == 0:
        result.artifact = tasks.path
        return result
    prep = result.preprocess_stage = stage_preprocess(run, tasks)
    if stop == 1:
        result.artifact = prep.path
        return result
    if stop >= STAGES.index("similarity"):
        check_comparable(prep.manifest["kept"], f"{cfg.data.path or cfg.data.source} after the correlation filter")
    if stop >= STAGES.index("pretrain"):
        n_train = prep.manifest["sizes"]["train"]
        warning = estimated_work(len(prep.manifest["kept"]), min(n_train, cfg.train.n_train or n_train),
                                 cfg.train.max_epochs)
        if warning:
            run.console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    feats = stage_featurize(run, tasks, prep)
    if stop == 2:
        result.artifact = feats.path
        return result
    # the probe set before any training: a missing or too small probe file fails in seconds
    probe = stage_probe(run, tasks, prep) if stop >= STAGES.index("probe") else None
    if probe is not None and stop >= STAGES.index("similarity") and "labels" in cfg.similarity.needs():
        check_probe_labels(probe_labels(probe, tasks, prep.manifest["kept"]), cfg.probe.source)
    run.start_ray()
    models = stage_pretrain(run, tasks, feats)
    units = {t.name: t.units for t in TaskTable.in_folder(tasks.path).tasks}
    _with_models(result, models, units)
    if stop == 3 or probe is None:
        result.artifact = run.artifacts / "models"
        return result
    if stop == 4:
        result.artifact = probe.path
        return result
    embs = stage_embed(run, probe, models)
    if stop == 5:
        result.artifact = run.artifacts / "embeddings"
        return result
    needs_features = {"dataset_features", "node_features"} & cfg.similarity.needs()
    dataset_features = stage_dataset_features(run, feats, models) if needs_features else None
    sim = stage_similarity(run, embs, probe, tasks, dataset_features)
    result.similarity_seconds = similarity_cost(embs, sim.stage, dataset_features)
    result.dropped = prep.manifest["dropped"]
    return _finish(run, result, sim, probe.manifest["n_probes"])
