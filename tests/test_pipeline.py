"""End to end on a real local Ray (2 CPUs): the tiny config, caching, and bad input via the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.config import load_config
from tasksim_ray.infra.cache import verify
from tasksim_ray.stages.pipeline import PipelineResult, run_pipeline

from .conftest import TINY_CONFIG

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def first_run(workdir: Path, ray_local: None) -> PipelineResult:
    return run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir)}))


def _no_partial_artifacts(workdir: Path) -> None:
    leftovers = [p for p in (workdir / "artifacts").rglob("*") if p.name.startswith(".tmp-") or ".tmp" in p.suffixes]
    assert leftovers == []
    for stage_dir in (workdir / "artifacts").iterdir():
        if stage_dir.name == "rsa_vectors":  # a store of atomically written files, not stage folders
            continue
        for artifact in stage_dir.iterdir():
            assert (artifact / "manifest.json").is_file(), f"incomplete artifact {artifact}"


def test_tiny_run_matrix_and_subset(first_run: PipelineResult, workdir: Path) -> None:
    names = first_run.tasks
    sim = first_run.similarity
    assert len(names) >= 3 and sim.shape == (len(names), len(names))
    assert np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1.0)
    assert np.all(sim <= 1.0) and np.all(sim >= -1.0)
    sel = first_run.selection
    assert sel is not None and first_run.metric == "rsa" and first_run.kinds["cmd"] == "distance"
    thr = sel.threshold
    for i, task in enumerate(names):
        if task in sel.uncoverable:
            assert all(sim[i, j] < thr for j in range(len(names)) if j != i)
        else:
            assert any(sim[i, names.index(s)] >= thr for s in sel.subset if s != task)
    assert set(first_run.model_dirs) == set(names) and first_run.tasks_stage and first_run.preprocess_stage
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["selection"]["subset"] == sel.subset
    assert first_run.paths["json"] == workdir / "report" / "report.json"
    assert set(report["models"]) == set(names)
    assert all(np.isfinite(m["best_val_mae"]) for m in report["models"].values())
    assert {d["name"] for d in report["dropped_tasks"]}.isdisjoint(names)
    embed = report["timings"]["embed"]  # where the embed stage's time went, hosts' share included
    assert embed["split_s"]["first_batch_s"] <= embed["split_s"]["stream_s"] <= embed["seconds"]
    assert embed["host_seconds"]["forward"] > 0 and {"driver_read_s", "driver_write_s"} <= set(embed["split_s"])
    assert (workdir / "report" / "rsa_heatmap.png").stat().st_size > 1000
    summary = (workdir / "report" / "summary.md").read_text()
    assert "Selected pretraining subset" in summary and "bootstrap intervals" in summary
    for metric in ("rsa", "cka", "cmd", "csi", "logme"):  # every configured metric, with its figures
        m = np.array(report["metrics"][metric]["matrix"])
        assert m.shape == sim.shape and np.all(np.isfinite(m))
        assert (workdir / "report" / f"{metric}_dendrogram.png").is_file()
    lower, upper = np.array(report["intervals"]["rsa"]["lower"]), np.array(report["intervals"]["rsa"]["upper"])
    assert np.all(lower <= upper + 1e-12)
    _no_partial_artifacts(workdir)


def test_rerun_reuses_every_stage(first_run: PipelineResult, workdir: Path) -> None:
    again = run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir)}))
    for stage in ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed", "similarity"):
        assert again.timings[stage]["cached"], stage
    assert np.array_equal(again.similarity, first_run.similarity)


def test_changed_training_reruns_pretraining_onwards_only(first_run: PipelineResult, workdir: Path) -> None:
    changed = run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir), "train.max_epochs": 2}))
    for stage in ("tasks", "preprocess", "featurize", "probe"):
        assert changed.timings[stage]["cached"], stage
    for stage in ("embed", "similarity"):
        assert not changed.timings[stage]["cached"], stage
    assert all(m["epochs_run"] <= 2 for m in changed.models.values())


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_cli_empty_probe_file_is_a_clear_error(first_run: PipelineResult, workdir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "probes.txt"
    empty.write_text("\n\n")
    code, out = _cli(["run", str(TINY_CONFIG), "--set", f"workdir={workdir}",
                      "--set", "probe.source=file", "--set", f"probe.path={empty}"])
    assert code == 2
    assert f"error: {empty}: probe file has no SMILES" in " ".join(out.split())
    _no_partial_artifacts(workdir)


@pytest.mark.parametrize("sets, message", [
    (["data.targets=[mu, nope]"], "target column(s) ['nope'] not found"),
    (["tasks=[mu, lumo, cv]"], "unknown task name(s) ['cv']"),
    (["train.epochs=3"], "unknown key 'train.epochs'"),
])
def test_cli_bad_input_exits_nonzero_without_artifacts(tmp_path: Path, sets: list[str], message: str) -> None:
    args = ["run", str(TINY_CONFIG), "--set", f"workdir={tmp_path / 'w'}"]
    for s in sets:
        args += ["--set", s]
    code, out = _cli(args)
    assert code == 2
    assert message in " ".join(out.split())
    assert not (tmp_path / "w" / "artifacts" / "tasks").exists() or not any(
        (tmp_path / "w" / "artifacts" / "tasks").iterdir())


def test_cli_malformed_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_epochs: 3\n")
    code, out = _cli(["run", str(bad)])
    assert code == 2 and f"error: {bad}: malformed YAML" in " ".join(out.split())


def test_adding_a_task_trains_and_embeds_only_that_task(first_run: PipelineResult, workdir: Path) -> None:
    """A study grown by one task reuses every other task's model, embedding and RSA vector."""
    def listing(kind: str) -> set[str]:
        return {p.name for p in (workdir / "artifacts" / kind).iterdir()}

    before = {kind: listing(kind) for kind in ("models", "embeddings")}
    run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir)}))  # the original study, cached
    assert {kind: listing(kind) for kind in before} == before
    grown = run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir),
                                                   "data.targets": ["mu", "alpha", "homo", "lumo", "gap", "cv"]}))
    assert "cv" in grown.tasks
    for kind in before:
        added = listing(kind) - before[kind]
        assert [name.split("-")[0] for name in added] == ["cv"], (kind, added)
    old, new = first_run.similarity, grown.similarity
    idx = [grown.tasks.index(t) for t in first_run.tasks]
    assert np.allclose(new[np.ix_(idx, idx)], old, atol=1e-12)


def test_cli_similarity_computes_chosen_metrics_from_cache(first_run: PipelineResult, workdir: Path) -> None:
    code, out = _cli(["similarity", str(TINY_CONFIG), "--set", f"workdir={workdir}",
                      "--metric", "rsa", "--metric", "cka"])
    assert code == 0, out
    assert "RSA task similarity" in out and "Selected pretraining subset" in out
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert set(report["metrics"]) == {"rsa", "cka"}
    for stage in ("pretrain", "embed"):
        assert report["timings"][stage]["cached"], stage


def test_damaged_cached_model_and_stage_are_rebuilt_with_a_warning(
        first_run: PipelineResult, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    t1, t2 = sorted(first_run.model_dirs)[:2]
    truncated, garbage = first_run.model_dirs[t1], first_run.model_dirs[t2]
    weights = truncated / "state_dict.pt"
    weights.write_bytes(weights.read_bytes()[:200])
    (garbage / "config.json").write_text("{garbage")
    assert first_run.preprocess_stage is not None
    stage_dir = first_run.preprocess_stage.path
    stage_file = next(p for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.name != "manifest.json")
    stage_file.write_bytes(stage_file.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, logger="tasksim_ray.infra.cache"):
        again = run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir)}))
    warnings = [r.getMessage() for r in caplog.records if r.name == "tasksim_ray.infra.cache"]
    for damaged in (truncated, garbage, stage_dir):
        assert sum(str(damaged) in w for w in warnings) == 1, (damaged, warnings)
    assert all("\n" not in w for w in warnings)
    assert not again.timings["preprocess"]["cached"] and not again.timings["pretrain"]["cached"]
    for directory in (truncated, garbage, stage_dir):
        verify(directory)
    assert again.similarity.shape == first_run.similarity.shape
    _no_partial_artifacts(workdir)


def test_code_version_bump_rebuilds_that_kind_and_its_dependents_only(first_run: PipelineResult, workdir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to the embedding code (its kind's version bumped) re-embeds and recomputes the
    similarities built from the embeddings; every stage before them is reused."""
    from tasksim_ray.infra import cache

    monkeypatch.setitem(cache.KIND_VERSIONS, "embedding", cache.KIND_VERSIONS["embedding"] + 1)
    bumped = run_pipeline(load_config(TINY_CONFIG, {"workdir": str(workdir)}))
    for stage in ("tasks", "preprocess", "featurize", "pretrain", "probe"):
        assert bumped.timings[stage]["cached"], stage
    for stage in ("embed", "similarity"):
        assert not bumped.timings[stage]["cached"], stage
    assert np.allclose(bumped.similarity, first_run.similarity)  # same code, same numbers
