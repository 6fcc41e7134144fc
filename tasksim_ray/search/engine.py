"""The search engine: Ray Tune's ``Tuner`` with ``OptunaSearch`` (seeded TPE, SQLite storage) and
ASHA (or FIFO), resumable with ``Tuner.restore``.

The experiment lives in ``<workdir>/search/<name>/`` (Tune's state, one folder per trial with
its checkpoints) beside ``<name>.db``, the Optuna study, which ``optuna-dashboard`` can open.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from optuna.samplers import TPESampler
from optuna.storages import RDBStorage
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import interrupts
from tasksim_ray.infra.progress import Console
from tasksim_ray.search.outputs import write_outputs
from tasksim_ray.search.progress import SearchProgress
from tasksim_ray.search.space import SpaceSpec, define_space, seed_points
from tasksim_ray.search.trainable import SearchJob, run_trial

METRIC, MODE = "objective", "min"


@dataclass
class SearchPaths:
    root: Path
    name: str

    @property
    def experiment(self) -> Path:
        return self.root / self.name

    @property
    def database(self) -> Path:
        return self.root / f"{self.name}.db"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.database}"


def build_job(cfg: PipelineConfig, console: Console) -> tuple[SearchJob, list[str]]:
    """The trial's data, from the cached pipeline and transfer-data stages; also the selected subset."""
    from tasksim_ray.transfer.runner import build_context

    ctx = build_context(cfg, console, need_similarity=cfg.search.seed_from_selection)
    targets = cfg.search.targets or ctx.data.targets[:1]
    unknown = [t for t in targets if t not in ctx.data.targets]
    if unknown:
        raise TasksimError(f"search.targets: {unknown} are not transfer tasks {ctx.data.targets}")
    spec = SpaceSpec.build(cfg, ctx.data.sources, targets)
    size = cfg.search.size or cfg.transfer.sizes[-1]
    job = SearchJob(spec, ctx.data.store(), ctx.data.tasks_key, {t: ctx.data.pool(t) for t in spec.sources},
                    {t: ctx.data.cell(t, cfg.search.fold, size) for t in targets},
                    str((ctx.run.artifacts / "subset-models").resolve()))
    return job, (ctx.similarity.subset if ctx.similarity else [])


def _tuner(cfg: PipelineConfig, job: SearchJob, selected: list[str], paths: SearchPaths,
           console: Console) -> tune.Tuner:
    sc = cfg.search
    points = seed_points(job.spec, selected) if sc.seed_from_selection else []
    # a define-by-run space means Tune cannot hand the searcher its metric: it must be given here too
    searcher = OptunaSearch(space=partial(define_space, spec=job.spec), metric=METRIC, mode=MODE,
                            points_to_evaluate=points or None,
                            sampler=TPESampler(seed=cfg.seed), study_name=paths.name,
                            storage=RDBStorage(paths.storage_url))
    search_alg = ConcurrencyLimiter(searcher, sc.max_concurrent) if sc.max_concurrent else searcher
    max_t = cfg.transfer.finetune.max_epochs
    scheduler = (ASHAScheduler(max_t=max_t, grace_period=min(sc.grace_period, max_t),
                               reduction_factor=sc.reduction_factor) if sc.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        _trainable(cfg, job),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=sc.num_trials, time_budget_s=sc.time_budget_s),
        run_config=tune.RunConfig(name=paths.name, storage_path=str(paths.root), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[SearchProgress(console, sc.num_trials)]))


def _trainable(cfg: PipelineConfig, job: SearchJob) -> Any:
    resources = {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), resources)


def run_search(cfg: PipelineConfig, console: Console | None = None, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the search and write its table, best recipe and plots."""
    console = console or Console()
    paths = SearchPaths((cfg.workdir_path / "search").resolve(), cfg.search.name)
    job, selected = build_job(cfg, console)  # runs the pipeline, which checked the trials' resources
    if resume:
        if not tune.Tuner.can_restore(str(paths.experiment)):
            raise TasksimError(f"{paths.experiment}: no search to resume (run without --resume first)")
        tuner = tune.Tuner.restore(str(paths.experiment), trainable=_trainable(cfg, job), resume_errored=True)
    else:
        if paths.experiment.exists():
            raise TasksimError(f"{paths.experiment}: a search named '{paths.name}' exists; resume it with --resume, "
                               "or set search.name")
        paths.database.unlink(missing_ok=True)
        paths.root.mkdir(parents=True, exist_ok=True)
        tuner = _tuner(cfg, job, selected, paths, console)
    # per-epoch checkpoints make Tune warn about syncing the experiment state: expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C / SIGTERM: Tune stops gracefully (saving its state for --resume), then the verb stops
    if interrupts.handled():
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours asks Tune to stop, as Tune's would
    with interrupts.graceful(lambda _: os.kill(os.getpid(), signal.SIGUSR1)):
        grid = tuner.fit()
    return write_outputs(cfg, grid, job, paths.root / f"{paths.name}-results", paths.storage_url, console)


def clear_search(cfg: PipelineConfig) -> None:
    """Forget a search (its Tune state, study and outputs); cached pretraining is kept."""
    paths = SearchPaths((cfg.workdir_path / "search").resolve(), cfg.search.name)
    shutil.rmtree(paths.experiment, ignore_errors=True)
    shutil.rmtree(paths.root / f"{paths.name}-results", ignore_errors=True)
    paths.database.unlink(missing_ok=True)
