"""A small real transfer run through Ray: two QM9 tasks, two sizes, two folds; killed and resumed."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasksim_ray.config import load_config
from tasksim_ray.infra.progress import Console
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_preprocess, stage_tasks
from tasksim_ray.transfer.data import TransferData, stage_transfer_data
from tasksim_ray.transfer.runner import run_transfer

from .conftest import TINY_CONFIG, run_cli_until

# enough epochs that a cell takes seconds, so the first run can be stopped between cells
SETS = {"transfer.tasks": ["mu", "alpha"], "transfer.finetune.max_epochs": 40, "transfer.finetune.patience": 40}
N_CELLS = 2 * 2 * 2  # recipes (scratch, from mu) x folds x sizes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer")


def _cell_files(workdir: Path) -> dict[str, int]:
    cells = workdir / "artifacts" / "cells"
    found = cells.glob("*/result.json") if cells.is_dir() else []
    return {p.parent.name: p.stat().st_mtime_ns for p in found if not p.parent.name.startswith(".")}


@pytest.fixture(scope="module")
def killed_then_resumed(workdir: Path, ray_local: None) -> tuple[dict[str, int], dict[str, Any]]:
    """Start `tasksim curves` in a subprocess, stop it once some cells are done, resume in-process."""
    args = ["curves", str(TINY_CONFIG), "--target", "alpha", "--source", "mu", "--set", f"workdir={workdir}",
            *[a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]]
    run_cli_until(args, lambda: len(_cell_files(workdir)) >= 2, signal.SIGTERM)
    before = _cell_files(workdir)
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), **SETS})
    return before, run_transfer(cfg, ["curves"], Console(quiet=True), target="alpha", sources=["mu"])


def test_resumed_run_keeps_finished_cells(killed_then_resumed: tuple[dict[str, int], dict[str, Any]],
                                          workdir: Path) -> None:
    before, _ = killed_then_resumed
    after = _cell_files(workdir)
    assert 2 <= len(before) < N_CELLS, "the first run should have been stopped halfway"
    assert len(after) == N_CELLS
    assert all(after[name] == mtime for name, mtime in before.items())  # finished cells were not redone
    assert not list((workdir / "artifacts" / "cells").glob(".*"))  # no half-written cell folders


def test_curves_and_gain(killed_then_resumed: tuple[dict[str, int], dict[str, Any]], workdir: Path) -> None:
    _, result = killed_then_resumed
    curves = result["studies"]["curves"]["curves"]
    assert set(curves) == {"scratch", "mu"}
    for entry in curves.values():
        assert entry["sizes"] == [30, 90] and entry["n_folds"] == 2
        assert np.isfinite(entry["auc_mean"]) and entry["auc_mean"] > 0
        assert entry["auc_norm_mean"] == pytest.approx(entry["auc_mean"] / 60)
    assert np.isfinite(curves["mu"]["gain_mean"])
    cells = [json.loads(p.read_text()) for p in (workdir / "artifacts" / "cells").glob("*/result.json")]
    assert {(c["recipe"], c["size"], c["fold"]) for c in cells} == {(r, n, f) for r in ("scratch", "mu")
                                                                   for n in (30, 90) for f in (0, 1)}
    assert all(c["epochs_run"] >= 1 and c["test_mae"] > 0 for c in cells)
    for name in ("json", "markdown", "curves_curves_alpha"):
        assert Path(result["paths"][name]).stat().st_size > 100


def test_target_molecules_never_in_pretraining(killed_then_resumed: Any, workdir: Path) -> None:
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), **SETS})
    run = Run(cfg, Console(quiet=True))
    tasks = stage_tasks(run)
    data = TransferData.load(stage_transfer_data(run, tasks, stage_preprocess(run, tasks)), tasks)
    pretraining = {r for t in data.sources for part in ("pool", "pretrain_val") for r in data.rows[t][part]}
    for t in data.targets:
        held_out = set(data.rows[t]["val"]) | set(data.rows[t]["test"])
        assert held_out and not held_out & pretraining
        sub = data.subset([s for s in data.sources if s != t])
        assert t not in sub.tasks


def _cli(workdir: Path, *args: str) -> Any:
    from typer.testing import CliRunner

    from tasksim_ray.cli import app

    sets = [a for k, v in {"workdir": str(workdir), **SETS}.items() for a in ("--set", f"{k}={v}")]
    return CliRunner().invoke(app, [*args, str(TINY_CONFIG), *sets])


def test_cli_subset_pretraining_and_finetune(killed_then_resumed: Any, workdir: Path) -> None:
    res = _cli(workdir, "pretrain", "--subset", "mu,lumo")
    assert res.exit_code == 0, res.output
    assert "200 x 3" in res.output  # budget 600 = 200 samples per epoch x 3 epochs
    res = _cli(workdir, "finetune", "--target", "alpha", "--source", "mu", "--size", "30")
    assert res.exit_code == 0, res.output
    assert "test MAE scratch" in res.output and "from mu" in res.output


def test_cli_transfer_errors_are_one_line(killed_then_resumed: Any, workdir: Path) -> None:
    res = _cli(workdir, "finetune", "--target", "alpha", "--subset", "alpha,mu")
    assert res.exit_code == 2 and "cannot be in its own pretraining data" in res.output
    res = _cli(workdir, "curves", "--target", "alpha", "--source", "nope")
    assert res.exit_code == 2 and "unknown source task" in res.output
    res = _cli(workdir, "subset-study", "--set", "transfer.budget.epochs=7")
    assert res.exit_code == 2 and "not divisible by epochs 7" in res.output


def test_cli_strategies_compares_variants(killed_then_resumed: Any, workdir: Path) -> None:
    variants = "{head: {strategy: head}, l2sp: {regularizer: {kind: l2sp, weight: 0.1}}}"
    res = _cli(workdir, "strategies", "--target", "alpha", "--source", "mu", "--set", f"transfer.variants={variants}")
    assert res.exit_code == 0, res.output
    result = json.loads((workdir / "report" / "transfer" / "strategies.json").read_text())
    pair = result["strategies"]["pairs"][0]
    assert (pair["target"], pair["source"]) == ("alpha", "mu")
    assert set(pair["variants"]) == {"head", "l2sp"}
    assert all(np.isfinite(v["gain_mean"]) for v in pair["variants"].values())
    assert result["strategies"]["variants"]["l2sp"]["regularizer"] == {"kind": "l2sp", "weight": 0.1, "bss_k": 1}


def test_subset_study_runs_both_protocols_and_named_sets(killed_then_resumed: Any, workdir: Path) -> None:
    """Paper 000's protocol (every set with all its pool labels) beside the compute-matched one, with a
    named extra set, and the fixed-threshold confusion of the matrix; both printed beside 000/facts."""
    sets = {"workdir": str(workdir), **SETS, "transfer.finetune.max_epochs": 2, "transfer.finetune.patience": 2,
            "transfer.subset": {"arms": ["budget", "all_labels"], "extra": {"paper": ["homo", "lumo"]}},
            "transfer.paper_tables": [{"table": "000/facts", "study": "subset"},
                                      {"table": "000/facts", "study": "matrix"}]}
    out = run_transfer(load_config(TINY_CONFIG, sets), ["subset", "matrix"], Console(quiet=True))
    sub = out["studies"]["subset"]
    assert sub["arms"] == ["budget", "all_labels"] and sub["all_labels_epochs"] == 3
    for t, entries in sub["targets"].items():
        others = entries["all others 200x3"]["pretrain_tasks"]
        assert t not in others and len(others) == len(sub["setting"]["kept_tasks"]) - 1
        for name, tasks in [("paper", ["homo", "lumo"]), ("all others", others)]:
            budget, whole = entries[f"{name} 200x3"], entries[f"{name} all labels"]
            assert budget["samples_seen"] == 600 and budget["pretrain_tasks"] == whole["pretrain_tasks"] == tasks
            # all labels: every pool label once per epoch, so a larger set sees more data
            assert whole["labels_used"] == whole["labels_available"]
            assert whole["samples_seen"] == 3 * whole["labels_available"]
        paper = entries["paper all labels"]
        assert paper["data_fraction"] == pytest.approx(paper["labels_used"] / entries["all others all labels"]
                                                       ["labels_used"])
        assert np.isfinite(paper["vs_all_others"]["mean"]) and np.isfinite(entries["paper 200x3"]["gain_mean"])
    facts = {r["key"]: r for r in sub["paper_comparison"]["000/facts"]["rows"]}
    assert facts["corr_threshold"]["ours"] == 0.8 and facts["corr_threshold"]["agrees"] is True
    assert facts["kept_tasks"]["ours"] == len(sub["setting"]["kept_tasks"])
    assert facts["folds"]["agrees"] is False  # 2 folds here, 5 in the paper
    fixed = out["studies"]["matrix"]["fixed_threshold"]["rsa"]
    (tn, fp), (fn, tp) = fixed["confusion"]
    assert fixed["threshold"] == 0.6 and tn + fp + fn + tp == fixed["n_pairs"] == 2
    assert fixed["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    matrix_facts = {r["key"]: r for r in out["studies"]["matrix"]["paper_comparison"]["000/facts"]["rows"]}
    assert matrix_facts["similarity_threshold"]["agrees"] and matrix_facts["gain_threshold"]["agrees"]
    md = Path(out["paths"]["markdown"]).read_text()
    assert md.count("Beside the paper: 000/facts") == 2 and "paper, all labels" in md
    assert "At fixed thresholds" in md and Path(out["paths"]["confusion_fixed_rsa"]).is_file()
