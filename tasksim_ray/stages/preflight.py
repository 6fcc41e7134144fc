"""Checks that need more than the config's own types, run before a stage writes or Ray starts:
a one-line error here is far cheaper than a traceback from inside a Ray task after training."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.resources import Request
from tasksim_ray.registry import BACKBONES
from tasksim_ray.similarity.logme import MIN_LABELS as LOGME_MIN_LABELS

# ``tasksim demo``'s pretraining: 10 kept tasks x 3,000 molecules x 30 epochs (about 5 minutes on 2 cores)
DEMO_WORK = 10 * 3000 * 30
WARN_FACTOR = 10  # a run this many times the demo's work says so before it starts


def check_config(cfg: PipelineConfig) -> None:
    """The workdir can hold folders, the backbone accepts every ``model.params`` key, and published
    checkpoints get the graphs they were trained on."""
    workdir = cfg.workdir_path
    for p in (workdir, *workdir.parents):
        if p.exists():
            if not p.is_dir():
                raise TasksimError(f"workdir {workdir}: {p} is a file, not a folder")
            break
    params = cfg.model.params
    if params:
        signature = inspect.signature(BACKBONES.get(cfg.model.backbone))
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        unknown = sorted(set(params) - set(signature.parameters) - {"self"})
        if unknown and not takes_any:
            known = sorted(n for n in signature.parameters if n != "self")
            raise TasksimError(f"model.params: unknown key(s) {unknown} for backbone '{cfg.model.backbone}'; "
                               f"it takes {known}")
    check_published_graph(cfg)


def check_published_graph(cfg: PipelineConfig) -> None:
    """Published CGCNN checkpoints were trained on graphs of particular settings (CGCNN's defaults,
    or those of a ``hyperparameters.json`` beside them): other ``data.graph`` settings would feed
    them bonds of another width or meaning, so they are refused before any work."""
    folders = [(key, Path(path)) for key, path in (("published.path", cfg.published.path),
                                                   ("transfer.sources.path", cfg.transfer.sources.path))
               if path and (key == "published.path" or cfg.transfer.sources.kind == "published")]
    if not folders:
        return
    from tasksim_ray.models.published import checkpoint_graph_settings

    ours = cfg.data.graph.model_dump()
    for key, folder in folders:
        theirs = checkpoint_graph_settings(folder if folder.is_dir() else folder.parent)
        differ = {k: v for k, v in ours.items() if k in theirs and theirs[k] != v}
        if differ:
            wanted = ", ".join(f"{k} {theirs[k]:g}" for k in differ)
            given = ", ".join(f"{k} {v:g}" for k, v in differ.items())
            raise TasksimError(f"{key} {folder}: the published checkpoints need data.graph {wanted} "
                               f"(they were trained on those graphs); the config sets {given}")


def run_requests(cfg: PipelineConfig) -> list[Request]:
    """Every resource request the config can make of Ray, whichever verb runs it, with its keys:
    checked against the cluster before the first Ray task (``infra.resources.check``)."""
    t, tc, b, sc = cfg.train, cfg.transfer, cfg.transfer.budget, cfg.search
    out = [Request("each pretraining job", {"CPU": t.num_cpus, "GPU": t.num_gpus},
                   {"CPU": f"train.num_cpus {t.num_cpus:g}", "GPU": f"train.num_gpus {t.num_gpus:g}"}),
           Request("each transfer cell", {"CPU": tc.num_cpus, "GPU": tc.num_gpus},
                   {"CPU": f"transfer.num_cpus {tc.num_cpus:g}", "GPU": f"transfer.num_gpus {tc.num_gpus:g}"}),
           Request("each search trial", {"CPU": sc.cpus_per_trial, "GPU": sc.gpus_per_trial},
                   {"CPU": f"search.cpus_per_trial {sc.cpus_per_trial:g}",
                    "GPU": f"search.gpus_per_trial {sc.gpus_per_trial:g}"})]
    if cfg.embed.use_gpu == "always":
        out.append(Request("each model host", {"GPU": cfg.embed.gpu_fraction},
                           {"GPU": f"embed.use_gpu always (embed.gpu_fraction {cfg.embed.gpu_fraction:g})"}))
    if b.workers > 1:  # Ray Train's workers run beside the pretraining job that waits for them
        out.append(Request(f"budgeted pretraining on {b.workers} Ray Train workers",
                           {"CPU": b.worker_cpus, "GPU": b.worker_gpus},
                           {"CPU": f"transfer.budget.worker_cpus {b.worker_cpus:g} (x workers {b.workers})",
                            "GPU": f"transfer.budget.worker_gpus {b.worker_gpus:g} (x workers {b.workers})"},
                           count=b.workers, plus={"CPU": tc.num_cpus, "GPU": tc.num_gpus}))
    return out


def estimated_work(n_models: int, n_molecules: int, epochs: int) -> str | None:
    """A one-line warning when pretraining would be far beyond the demo's work (None if not):
    a config that forgot ``train.n_train`` or ``max_epochs`` hears it before hours of training."""
    work = n_models * n_molecules * epochs
    if work <= WARN_FACTOR * DEMO_WORK:
        return None
    return (f"estimated work: {n_models} models x {n_molecules:,} molecules x up to {epochs} epochs = {work:.2g} "
            f"molecule-epochs, {work / DEMO_WORK:.0f}x the demo's (about 5 minutes on 2 cores); "
            "set train.n_train / train.max_epochs for a smaller run")


def check_comparable(names: list[str], where: str) -> None:
    """Similarity compares tasks: a single task would fail in the report after all the work."""
    if len(names) < 2:
        raise TasksimError(f"{where}: similarity needs at least 2 tasks, got {len(names)} ({', '.join(names)})")


def check_probe_labels(labels: dict[str, np.ndarray], probe_source: str) -> None:
    """LogME scores each task's labels on the probe set: every task needs a few there, checked
    before any model trains (a holdout probe set of many small tasks can miss one)."""
    if not labels:
        raise TasksimError(f"metric 'logme' needs probe labels: probe.source '{probe_source}' has none "
                           "(use probe.source 'holdout')")
    short = {t: int(np.isfinite(y).sum()) for t, y in labels.items() if np.isfinite(y).sum() < LOGME_MIN_LABELS}
    if short:
        task, n = next(iter(short.items()))
        raise TasksimError(f"metric 'logme': task '{task}' has {n} labelled probe(s), at least {LOGME_MIN_LABELS} "
                           f"are needed ({len(short)} task(s) short); raise probe.size or drop 'logme'")
