"""One Ray job runner: keyed jobs with declared resources, cached results, published as they land.

Every batch of Ray work that caches its results (per-task pretraining, multi-task pretraining,
transfer cells, crystal MoE cells, RSA vectors) goes through :func:`run_jobs`: jobs whose artifact
is complete are skipped, the rest run as Ray tasks with the resources they declare, and each result
is published the moment it lands, so a run killed halfway resumes with only the missing jobs.
:func:`start_jobs` starts jobs without waiting, for work that later jobs depend on (``Job.after``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import ray
from ray.exceptions import RayError, RayTaskError

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import metrics
from tasksim_ray.infra.cache import Artifacts, read_manifest
from tasksim_ray.infra.resources import PendingGuard

OnDone = Callable[[str, bool], None]  # (job name, was cached): what infra.progress.task_progress yields


@dataclass(frozen=True)
class Job:
    """``fn(*args, *results of after)`` as a Ray task; ``key`` names its artifact, ``name`` it in
    progress and errors, ``title`` (default: ``name``) it on the Ray dashboard: what it does and for
    which task (``pretrain:mu``), so a user watching a cluster run sees which model trains or hangs.
    ``after`` are refs of running jobs this one must wait for."""

    key: str
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    num_cpus: float = 1
    num_gpus: float = 0
    memory: int | None = None  # bytes Ray reserves for the task (None: no reservation)
    after: tuple[ray.ObjectRef, ...] = field(default=())
    title: str | None = None

    @property
    def shape(self) -> dict[str, float]:
        """What one run of the job asks Ray for."""
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **({"memory": self.memory} if self.memory else {})}


class Results(Protocol):
    """Where a kind of job's results live: the artifact scheme of ``infra.cache``."""

    kind: str

    def done(self, key: str) -> bool: ...

    def load(self, key: str) -> Any: ...

    def save(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class _ArtifactResults:
    """Results kept as artifact folders ``<root>/<key>/``: done once the folder is complete."""

    artifacts: Artifacts

    @property
    def kind(self) -> str:
        return self.artifacts.kind

    def done(self, key: str) -> bool:
        return self.artifacts.complete(key)


@dataclass(frozen=True)
class JsonResults(_ArtifactResults):
    """The job returns a JSON-able value; the runner publishes it as ``<root>/<key>/result.json``."""

    def load(self, key: str) -> Any:
        return self.artifacts.load_json(key)

    def save(self, key: str, value: Any) -> None:
        self.artifacts.save_json(key, value)


@dataclass(frozen=True)
class ManifestResults(_ArtifactResults):
    """The job writes its own artifact folder (a checkpoint, a vector); its result is the manifest's
    ``field``. Saving only checks that the folder is complete: a job that returned without
    writing it is an error, not a silent cache miss on every rerun."""

    field: str = "metrics"

    def load(self, key: str) -> Any:
        return read_manifest(self.artifacts.path(key))[self.field]

    def save(self, key: str, value: Any) -> None:
        if not self.artifacts.complete(key):
            raise TasksimError(f"{self.kind} job {key} returned without writing {self.artifacts.path(key)}")


def start_jobs(jobs: Sequence[Job], results: Results,
               on_done: OnDone | None = None) -> tuple[dict[str, Any], dict[str, ray.ObjectRef]]:
    """(cached results by key, refs of the jobs started now by key); equal keys start once."""
    cached: dict[str, Any] = {}
    running: dict[str, ray.ObjectRef] = {}
    for job in jobs:
        if job.key in cached or job.key in running:
            continue
        if results.done(job.key):
            cached[job.key] = results.load(job.key)
            metrics.job_done(results.kind, "cached")
            if on_done:
                on_done(job.name, True)
            continue
        extra = {"memory": job.memory} if job.memory else {}
        remote = _remote(job.fn).options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=1,
                                         name=job.title or job.name, **extra)
        running[job.key] = remote.remote(*job.args, *job.after)
    return cached, running


@cache
def _remote(fn: Callable[..., Any]) -> Any:
    """One Ray remote function per body (exported once); each job adds its resources and name."""
    return ray.remote(fn)


def run_jobs(jobs: Sequence[Job], results: Results, on_done: OnDone | None = None,
             max_running: int | None = None) -> list[Any]:
    """Every job's result, in the order asked: cached ones loaded, the rest run on Ray (at most
    ``max_running`` at once) and published as each lands. If any job fails, the others still
    finish and are published, then a one-line ``TasksimError`` names the first failure."""
    names = {job.key: job.name for job in jobs}
    queue = list({job.key: job for job in jobs}.values())
    limit = max_running or len(queue)
    out: dict[str, Any] = {}
    pending: dict[ray.ObjectRef, str] = {}
    failures: list[str] = []
    waiting = _Waiting({job.key: (f"{results.kind} job '{job.name}'", job.shape) for job in queue})
    while queue or pending:
        while queue and len(pending) < limit:
            cached, started = start_jobs([queue.pop(0)], results, on_done)
            out |= cached
            pending |= {ref: key for key, ref in started.items()}
        metrics.jobs_running(results.kind, len(pending))
        if not pending:
            break
        ref = waiting.next_ready(pending)
        key = pending.pop(ref)
        try:
            out[key] = ray.get(ref)
            results.save(key, out[key])  # durable before the next one lands: a killed run resumes here
        except (RayError, TasksimError) as exc:
            failures.append(f"{results.kind} job '{names[key]}' failed: {_one_line(exc)}")
            metrics.job_done(results.kind, "failed")
        else:
            metrics.job_done(results.kind, "ran")
            if on_done:
                on_done(names[key], False)
    metrics.jobs_running(results.kind, 0)
    if failures:
        more = f" ({len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise TasksimError(failures[0] + more)
    return [out[job.key] for job in jobs]


@dataclass
class _Waiting:
    """Waits for the next of the running jobs, bounded by the pending limit (a job no node can run
    fails the batch after ``ray.pending_timeout_s``), and cancels them all on Ctrl-C or SIGTERM."""

    asks: dict[str, tuple[str, dict[str, float]]]  # job key -> (its name in errors, its resources)
    guard: PendingGuard = field(default_factory=PendingGuard)

    def next_ready(self, pending: dict[ray.ObjectRef, str]) -> ray.ObjectRef:
        try:
            while True:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                if ready:
                    return ready[0]
                self.guard.check(dict(self.asks[key] for key in pending.values()))
        except (KeyboardInterrupt, TasksimError):  # the jobs in flight remove their scratch folders as they stop
            cancel(list(pending))
            raise


def cancel(refs: list[ray.ObjectRef], wait_s: float = 5.0) -> None:
    """Cancel running jobs the way Ctrl-C would (a KeyboardInterrupt inside each, so its scratch
    folder is removed) and give them a few seconds to unwind."""
    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=wait_s)


def _one_line(exc: BaseException) -> str:
    """The cause of a Ray task failure on one line (the task's own exception, not Ray's traceback)."""
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    if isinstance(cause, RayTaskError):  # a failed dependency: report what failed there
        return _one_line(cause)
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    message = (lines[-1] if cause is exc else lines[0]) if lines else ""  # Ray's own text ends with the cause
    return message if isinstance(cause, TasksimError) else f"{type(cause).__name__}: {message}".rstrip(": ")
