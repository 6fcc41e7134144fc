"""Ray Tune + Optuna search on the tiny config, on a real local Ray."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from tasksim_ray.config import load_config
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import write_manifest
from tasksim_ray.infra.progress import Console
from tasksim_ray.search.engine import build_job, run_search
from tasksim_ray.search.space import SpaceSpec, decode, define_space, seed_points
from tasksim_ray.training.multitask import subset_dir
from tasksim_ray.training.subsets import combine_pools

from .conftest import TINY_CONFIG, run_cli_until

KEPT = ["mu", "alpha", "homo", "lumo"]


def test_space_gives_only_valid_recipes() -> None:
    cfg = load_config(TINY_CONFIG, {"search.subset_size": [1, 3], "search.splits": [[200, 3], [100, 6]],
                                    "search.regularizers": ["none", "l2sp", "bss"], "search.max_neighbours": 4})
    spec = SpaceSpec.build(cfg, KEPT, ["alpha"])
    assert "alpha" not in spec.sources
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        constants = define_space(trial, spec)
        recipe = decode({**trial.params, **constants}, spec)
        assert list(recipe.subset) == constants["subset"]
        assert 1 <= len(recipe.subset) <= 3 and "alpha" not in recipe.subset
        assert recipe.split[0] * recipe.split[1] == cfg.transfer.budget.total  # the budget, exactly
        assert ("reg_weight" in trial.params) == (recipe.finetune.regularizer.kind != "none")
        study.tell(trial, 0.0)
    points = seed_points(spec, ["mu", "homo", "alpha"])
    subsets = [decode(p, spec).subset for p in points]
    assert subsets[0] == ("mu", "homo")  # the selection minus the target, first
    assert ("mu",) in subsets and ("homo",) in subsets and ("mu", "homo", "lumo") in subsets


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search")


def _count_finished(root: Path) -> int:
    return sum(1 for p in root.glob("search/search/*/result.json") if p.read_text().count("\n") >= 1
               and '"done": true' in p.read_text())


@pytest.fixture(scope="module")
def interrupted_then_resumed(workdir: Path, ray_local: None) -> tuple[dict[str, int], dict[str, Any]]:
    """`tasksim search` in a subprocess, stopped (SIGINT) after its first trial, then resumed."""
    args = ["search", str(TINY_CONFIG), "--set", f"workdir={workdir}", "--set", "search.max_concurrent=1"]
    run_cli_until(args, lambda: _count_finished(workdir) >= 1, signal.SIGINT)
    before = {p.parent.name: p.stat().st_mtime_ns for p in workdir.glob("search/search/*/result.json")}
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), "search.max_concurrent": 1})
    return before, run_search(cfg, Console(quiet=True), resume=True)


def test_interrupted_search_resumes_without_repeating(interrupted_then_resumed: Any, workdir: Path) -> None:
    before, summary = interrupted_then_resumed
    assert 1 <= len(before) < 4, "the first run should have been stopped after its first trial(s)"
    table = pd.read_parquet(workdir / "search" / "search-results" / "trials.parquet")
    assert len(table) == 4 and table["trial_id"].is_unique
    trial_dirs = sorted(p.name for p in (workdir / "search" / "search").iterdir() if p.is_dir())
    assert len(trial_dirs) == 4  # no trial started twice
    assert summary["trials"] == 4 and summary["failed"] == 0
    assert (table["epochs"] >= 1).all() and table["objective"].notna().all()
    best = load_config(summary["best_config"])  # a ready-to-run config
    assert best.transfer.budget.samples == summary["best"]["split"][0]
    assert Path(summary["plots"]["history"]).stat().st_size > 1000


def test_failing_trial_is_recorded_and_search_goes_on(workdir: Path, ray_local: None) -> None:
    """The second seeded trial finds its pretrained model corrupt (a real failure, no test hook)."""
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), "search.name": "failing", "search.num_trials": 2,
                                    "search.max_neighbours": 1, "transfer.finetune.max_epochs": 2})
    job, selected = build_job(cfg, Console(quiet=True))
    first, second = (decode(p, job.spec) for p in seed_points(job.spec, selected)[:2])
    assert first.subset != second.subset
    data = combine_pools(job.tasks_key, [job.pools[t] for t in second.subset])
    bad = subset_dir(Path(job.pretrain_root), data, cfg.model, second.budget, second.split, cfg.seed)
    shutil.rmtree(bad, ignore_errors=True)  # an earlier test may have trained it
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{}")
    write_manifest(bad, "subset-model", bad.name)  # looks finished, but holds no model
    summary = run_search(cfg, Console(quiet=True))
    table = pd.read_csv(summary["table"])
    assert summary["trials"] == 2 and summary["failed"] == 1
    failed = table[table["status"] == "failed"].iloc[0]
    assert failed["subset"] == "+".join(second.subset) and "TypeError" in failed["error"]
    assert table[table["status"] == "ok"].iloc[0]["subset"] == "+".join(first.subset)
    shutil.rmtree(bad)


def test_unsatisfiable_resources_fail_up_front(workdir: Path, ray_local: None) -> None:
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), "search.name": "greedy", "search.gpus_per_trial": 1})
    with pytest.raises(TasksimError, match=r"search.gpus_per_trial 1: each search trial asks for 1 CPU \+ 1 GPU, "
                                           "but no node"):
        run_search(cfg, Console(quiet=True))


def test_samples_range_gives_exact_log_spaced_budgets() -> None:
    cfg = load_config(TINY_CONFIG, {"search.samples_range": [50, 600]})
    spec = SpaceSpec.build(cfg, KEPT, ["alpha"])
    assert len(spec.splits) == 6 and all(n * e == 600 for n, e in spec.splits)
    ns = [n for n, _ in spec.splits]
    assert ns == sorted(ns) and ns[0] == 50 and ns[-1] == 600
    with pytest.raises(TasksimError, match="divides the budget"):
        SpaceSpec.build(load_config(TINY_CONFIG, {"search.samples_range": [601, 700]}), KEPT, ["alpha"])
