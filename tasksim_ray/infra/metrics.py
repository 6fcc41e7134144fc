"""Custom Ray metrics: what a run has done, on the Ray dashboard and its Prometheus endpoint
(exported as ``ray_tasksim_*``). Recording is a no-op outside Ray, so library code calls these
freely; the metric objects are made on first use in each process."""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Gauge


@cache
def _counter(name: str, description: str, tags: tuple[str, ...]) -> Counter:
    return Counter(f"tasksim_{name}", description=description, tag_keys=tags)


@cache
def _gauge(name: str, description: str) -> Gauge:
    return Gauge(f"tasksim_{name}", description=description)


def epoch_done(stage: str, task: str) -> None:
    """One training epoch finished (stage: pretrain, subset-pretrain, finetune, search)."""
    _counter("epochs", "training epochs finished", ("stage", "task")).inc(1, tags={"stage": stage, "task": task})


def probes_embedded(task: str, n: int) -> None:
    """``n`` probe molecules went through ``task``'s model (a rate on the dashboard: probes/s)."""
    _counter("probes_embedded", "probe molecules embedded", ("task",)).inc(n, tags={"task": task})


def similarity_pairs(n: int) -> None:
    _counter("similarity_pairs", "task pairs whose RSA was computed", ()).inc(n)


def search_status(running: int, finished: int, failed: int, best: float | None) -> None:
    _gauge("search_trials_running", "search trials running").set(running)
    _gauge("search_trials_finished", "search trials finished").set(finished)
    _gauge("search_trials_failed", "search trials that raised").set(failed)
    if best is not None:
        _gauge("search_best_objective", "best search objective so far").set(best)


def job_done(kind: str, outcome: str) -> None:
    """A keyed job of ``kind`` (cell, model, ...) is settled: ``cached``, ``ran`` or ``failed``."""
    _counter("jobs", "keyed jobs settled, by outcome", ("kind", "outcome")).inc(1, tags={"kind": kind,
                                                                                      "outcome": outcome})


def jobs_running(kind: str, n: int) -> None:
    _tagged_gauge("jobs_running", "keyed jobs running on Ray", ("kind",)).set(n, tags={"kind": kind})


@cache
def _tagged_gauge(name: str, description: str, tags: tuple[str, ...]) -> Gauge:
    return Gauge(f"tasksim_{name}", description=description, tag_keys=tags)
