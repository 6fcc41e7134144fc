"""Checks that need more than the config's own types, run before a stage writes or Ray starts:
a one-line error here is far cheaper than a traceback from inside a Ray task after training."""

from __future__ import annotations

import inspect

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import BACKBONES
from tasksim_ray.similarity.logme import MIN_LABELS as LOGME_MIN_LABELS


def check_config(cfg: PipelineConfig) -> None:
    """The workdir can hold folders, and the backbone accepts every ``model.params`` key."""
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
