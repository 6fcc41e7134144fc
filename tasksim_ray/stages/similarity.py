"""The similarity stage: every configured metric over the cached embeddings, plus RSA bootstrap CIs.

RSA with Spearman or Pearson comparisons goes through the out-of-core engine, whose rank vectors
and pair sums are cached by embedding key across studies: adding one task computes only its row
and column. Other metrics are cheap at probe-set scale and run from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import writing
from tasksim_ray.infra.progress import task_progress
from tasksim_ray.similarity import METRICS, SimilarityInputs
from tasksim_ray.similarity.bootstrap import bootstrap_rsa
from tasksim_ray.similarity.engine import RSAEngine
from tasksim_ray.stages import Run, Stage
from tasksim_ray.stages.embedding import TaskEmbedding, probe_labels


@dataclass
class SimilarityResult:
    names: list[str]
    matrices: dict[str, np.ndarray]
    ci: dict[str, np.ndarray]  # rsa_lower, rsa_upper, rsa_std when bootstrapped
    stage: Stage


def _frame(names: list[str], m: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(m, index=names, columns=names)


def _rsa(run: Run, embs: dict[str, TaskEmbedding], loaded: dict[str, np.ndarray]) -> np.ndarray:
    sim_cfg = run.cfg.similarity
    if sim_cfg.comparison == "kendall":
        return METRICS["rsa"].fn(SimilarityInputs(embeddings=loaded), comparison="kendall")
    engine = RSAEngine(run.artifacts / "rsa_vectors", sim_cfg.comparison, memory_budget_gb=sim_cfg.memory_budget_gb)
    by_key = {embs[t].key: loaded[t] for t in loaded}
    with task_progress(run.console, "rsa ranks", len(by_key)) as advance:
        names = {embs[t].key: t for t in loaded}
        engine.ensure_vectors(by_key, on_done=lambda key, cached: advance(names[key], cached))
    return engine.matrix([embs[t].key for t in loaded])


def stage_similarity(run: Run, embs: dict[str, TaskEmbedding], probe: Stage, tasks: Stage | None,
                     dataset_features: Stage | None) -> SimilarityResult:
    cfg = run.cfg.similarity
    names = list(embs)
    run.release_hosts()  # the similarity engine's Ray tasks get the CPUs the hosts held

    def build(out: Path) -> dict[str, Any]:
        loaded: dict[str, np.ndarray] = {}
        ids0: list[str] | None = None
        for t, e in embs.items():
            ids, loaded[t] = e.load()
            if ids0 is not None and ids != ids0:
                raise TasksimError(f"task '{t}' embedded a different probe set than '{names[0]}'")
            ids0 = ids
        inputs = SimilarityInputs(embeddings={t: v.astype(np.float64) for t, v in loaded.items()})
        options: dict[str, dict[str, Any]] = {"cmd": {"order": cfg.cmd_order}}
        if "logme" in cfg.metrics:
            inputs.labels = probe_labels(probe, tasks, names) if tasks else {}
            if not inputs.labels:
                raise TasksimError("metric 'logme' needs probe labels: use probe.source 'holdout' "
                                   "(a probe file has no labels)")
        if dataset_features is not None:
            feats = np.load(dataset_features.path / "features.npz")
            inputs.dataset_features = {t: feats[t].astype(np.float64) for t in names}
            options["csi"] = {"seed": run.cfg.seed}
            if cfg.csi.level == "node":
                options["csi"] |= {"groups": {t: feats[f"{t}__groups"] for t in names},
                                   "per_group": cfg.csi.per_structure}
        for metric in cfg.metrics:
            matrix = _rsa(run, embs, inputs.embeddings) if metric == "rsa" else \
                METRICS[metric].fn(inputs, **options.get(metric, {}))
            with writing(out / f"{metric}.csv"):
                _frame(names, matrix).to_csv(out / f"{metric}.csv")
        if "rsa" in cfg.metrics and cfg.bootstrap.n_boot > 0 and cfg.comparison != "kendall":
            with run.console.status(f"bootstrapping RSA over probes ({cfg.bootstrap.n_boot} resamples)"):
                ci = bootstrap_rsa(inputs.embeddings, cfg.comparison, cfg.bootstrap.n_boot, cfg.bootstrap.level,
                                   run.cfg.seed, cfg.bootstrap.max_probes)
            for part in ("lower", "upper", "std"):
                with writing(out / f"rsa_{part}.csv"):
                    _frame(names, getattr(ci, part)).to_csv(out / f"rsa_{part}.csv")
        return {"metrics": cfg.metrics, "bootstrap": cfg.bootstrap.model_dump()}

    labels_from = tasks.key if tasks and "logme" in cfg.metrics else None
    parts = [{t: e.key for t, e in embs.items()}, cfg.model_dump(), probe.key, labels_from,
             dataset_features.key if dataset_features else None, run.cfg.seed]
    stage = run.stage("similarity", parts, build)
    read = {p.stem: pd.read_csv(p, index_col=0).loc[names, names].to_numpy() for p in stage.path.glob("*.csv")}
    matrices = {m: read[m] for m in cfg.metrics}
    ci = {k: v for k, v in read.items() if k.startswith("rsa_")}
    return SimilarityResult(names, matrices, ci, stage)
