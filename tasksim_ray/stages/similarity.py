"""The similarity stage: every configured metric over the inputs its ``MetricSpec.needs`` names, and
the intervals of the metrics that give them (RSA's probe bootstrap).

Metrics get a cache folder and each task's embedding key (``SimilarityInputs.cache``): RSA keeps its
per-task rank vectors and pair sums there, so adding one task computes only its row and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import writing
from tasksim_ray.similarity import METRICS, SimilarityInputs
from tasksim_ray.similarity.inputs import MetricCache
from tasksim_ray.stages import Run, Stage
from tasksim_ray.stages.embedding import TaskEmbedding, probe_labels

INTERVAL_PARTS = ("lower", "upper", "std")


@dataclass
class SimilarityResult:
    names: list[str]
    matrices: dict[str, np.ndarray]
    ci: dict[str, np.ndarray]  # <metric>_lower, _upper, _std of the metrics with intervals
    stage: Stage


def _frame(names: list[str], m: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(m, index=names, columns=names)


def _inputs(run: Run, embs: dict[str, TaskEmbedding], probe: Stage, tasks: Stage | None,
            dataset_features: Stage | None) -> SimilarityInputs:
    """What the configured metrics need: probe embeddings, probe labels, the shared model's features."""
    names, needs = list(embs), run.cfg.similarity.needs()
    loaded: dict[str, np.ndarray] = {}
    ids0: list[str] | None = None
    for t, e in embs.items():
        ids, loaded[t] = e.load()
        if ids0 is not None and ids != ids0:
            raise TasksimError(f"task '{t}' embedded a different probe set than '{names[0]}'")
        ids0 = ids
    inputs = SimilarityInputs(embeddings={t: v.astype(np.float64) for t, v in loaded.items()}, seed=run.cfg.seed,
                              cache=MetricCache(run.artifacts, {t: e.key for t, e in embs.items()}))
    if "labels" in needs:
        inputs.labels = probe_labels(probe, tasks, names) if tasks else {}
        if not inputs.labels:
            raise TasksimError("metrics of probe labels (logme) need labelled probes: use probe.source 'holdout' "
                               "(a probe file has no labels)")
    if dataset_features is not None:
        feats = np.load(dataset_features.path / "features.npz")
        if "dataset_features" in needs:
            inputs.dataset_features = {t: feats[f"{t}__graph"].astype(np.float64) for t in names}
        if "node_features" in needs:
            inputs.node_features = {t: feats[f"{t}__node"].astype(np.float64) for t in names}
            inputs.node_groups = {t: feats[f"{t}__groups"] for t in names}
    return inputs


def stage_similarity(run: Run, embs: dict[str, TaskEmbedding], probe: Stage, tasks: Stage | None,
                     dataset_features: Stage | None) -> SimilarityResult:
    cfg = run.cfg.similarity
    names = list(embs)
    run.release_hosts()  # the similarity engine's Ray tasks get the CPUs the hosts held

    def build(out: Path) -> dict[str, Any]:
        inputs = _inputs(run, embs, probe, tasks, dataset_features)
        boot = cfg.bootstrap
        for metric in cfg.metrics:
            spec, options = METRICS.get(metric), cfg.options_for(metric)
            with run.console.status(f"similarity: {spec.title}"):
                matrix = spec.fn(inputs, **options)
            with writing(out / f"{metric}.csv"):
                _frame(names, matrix).to_csv(out / f"{metric}.csv")
            if spec.intervals_fn is not None and boot.n_boot > 0:
                with run.console.status(f"bootstrapping {metric} over probes ({boot.n_boot} resamples)"):
                    ci = spec.intervals_fn(inputs, **options, n_boot=boot.n_boot, level=boot.level, seed=run.cfg.seed,
                                           max_probes=boot.max_probes)
                for part in INTERVAL_PARTS if ci is not None else ():
                    with writing(out / f"{metric}_{part}.csv"):
                        _frame(names, getattr(ci, part)).to_csv(out / f"{metric}_{part}.csv")
        return {"metrics": cfg.metrics, "bootstrap": boot.model_dump()}

    labels_from = tasks.key if tasks and "labels" in cfg.needs() else None
    parts = [{t: e.key for t, e in embs.items()}, cfg.model_dump(), probe.key, labels_from,
             dataset_features.key if dataset_features else None, run.cfg.seed]
    stage = run.stage("similarity", parts, build)
    read = {p.stem: pd.read_csv(p, index_col=0).loc[names, names].to_numpy() for p in stage.path.glob("*.csv")}
    matrices = {m: read[m] for m in cfg.metrics}
    ci = {k: v for k, v in read.items() if k not in matrices}
    return SimilarityResult(names, matrices, ci, stage)
