"""Crystals end to end on a real local Ray: three small MoE tasks with a CGCNN per task, CSI from
CHGNet's node features, published extractors as task models, and a bad structure as a clear error."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.config import load_config
from tasksim_ray.stages.pipeline import PipelineResult, run_pipeline

from .conftest import REPO

pytestmark = pytest.mark.usefixtures("ray_local")

CONFIG = REPO / "configs" / "crystal_tiny.yaml"
EXTRACTORS = REPO.parent / "shared" / "data" / "models" / "cgcnn_moe_extractors"
TASKS = ["expt_eform", "jarvis_2d_eform", "jarvis_2d_exfoliation"]  # the known files' short aliases


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crystal")


@pytest.fixture(scope="module")
def first_run(workdir: Path, ray_local: None) -> PipelineResult:
    return run_pipeline(load_config(CONFIG, {"workdir": str(workdir), "similarity.dataset_features.model": "chgnet"}))


def test_crystal_tasks_train_embed_and_compare(first_run: PipelineResult, workdir: Path) -> None:
    assert first_run.tasks == TASKS
    for task, m in first_run.models.items():
        assert np.isfinite(m["best_val_mae"]) and m["n_train"] >= 40, task
    rsa = first_run.matrices["rsa"]
    assert np.allclose(rsa, rsa.T) and np.allclose(np.diag(rsa), 1.0)
    # CSI is a Frechet distance between tasks' CHGNet atom-feature distributions
    csi = first_run.matrices["csi"]
    assert np.allclose(csi, csi.T) and np.allclose(np.diag(csi), 0.0)
    assert np.all(csi[~np.eye(3, dtype=bool)] > 0)
    features = next((workdir / "artifacts" / "dataset_features").iterdir())
    assert json.loads((features / "manifest.json").read_text())["shared_model"] == "chgnet"
    assert (workdir / "report" / "csi_heatmap.png").stat().st_size > 1000


def test_crystal_rerun_is_cached(first_run: PipelineResult, workdir: Path) -> None:
    again = run_pipeline(load_config(CONFIG, {"workdir": str(workdir), "similarity.dataset_features.model": "chgnet"}))
    for stage in ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed", "similarity"):
        assert again.timings[stage]["cached"], stage
    assert all(np.array_equal(again.matrices[m], first_run.matrices[m]) for m in first_run.matrices)


@pytest.mark.skipif(not EXTRACTORS.is_dir(), reason="published CGCNN extractors not present")
def test_published_extractors_are_task_models(tmp_path: Path) -> None:
    picked = ["eform", "jarvisEform", "bandgap"]
    result = run_pipeline(load_config(CONFIG, {"workdir": str(tmp_path), "published.path": str(EXTRACTORS),
                                               "published.tasks": picked, "similarity.metrics": ["rsa", "cka"]}))
    assert result.tasks == picked
    rsa = result.matrices["rsa"]
    assert rsa.shape == (3, 3) and np.allclose(np.diag(rsa), 1.0)
    assert "pretrain" not in result.timings  # nothing was trained
    assert "published (singletask_eform_32hfealen_best_model.pth.tar)" in (
        tmp_path / "report" / "summary.md").read_text()


def test_bad_structure_names_file_and_row(tmp_path: Path) -> None:
    src = REPO / "tests" / "data" / "crystals" / "tiny_tasks"
    data = tmp_path / "tasks"
    data.mkdir()
    for f in src.glob("*.json.gz"):
        doc = json.loads(gzip.open(f, "rt").read())
        if f.name.startswith("jarvis_dft_2d_eform"):
            site = doc["data"][5]["structure"]["sites"][0]
            doc["data"][5]["structure"]["sites"].append(site)  # a second atom on the same spot
            bad_id = doc["data"][5]["mpid"]
        with gzip.open(data / f.name, "wt") as fh:
            json.dump(doc, fh)
    result = CliRunner().invoke(app, ["run", str(CONFIG), "--set", f"workdir={tmp_path / 'w'}",
                                      "--set", f"data.path={data}"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert f"jarvis_dft_2d_eform_2022-04-11:{bad_id}" in out and "error:" in out
    assert not any((tmp_path / "w" / "artifacts").glob("featurize/*"))


def test_a_foundation_model_is_a_fine_tuning_source(first_run: PipelineResult, workdir: Path) -> None:
    """CHGNet's shipped universal model fine-tuned on a crystal task, in a cell next to scratch."""
    from tasksim_ray.transfer.runner import finetune_once

    cfg = load_config(CONFIG, {"workdir": str(workdir), "similarity.dataset_features.model": "chgnet",
                               "transfer.foundation": ["chgnet"], "transfer.finetune.max_epochs": 2})
    out = finetune_once(cfg, "expt_eform", ["chgnet"], size=10, fold=0)
    tuned, scratch = out["finetuned"], out["scratch"]
    assert tuned["recipe"] == "chgnet" and tuned["epochs_run"] == 2 and np.isfinite(tuned["test_mae"])
    assert scratch["recipe"] == "scratch" and np.isfinite(scratch["test_mae"])


def test_budget_study_scores_csi_as_single_source_pick(first_run: PipelineResult, workdir: Path) -> None:
    """Every other task alone under one budget vs all others under the same budget, per target; CSI
    (CHGNet node features) and graph-level CSI pick the single source, are judged as recommenders and
    against the random and hindsight-best controls; a second split (N vs E) pretrains the picks only."""
    from tasksim_ray.transfer.runner import run_transfer

    cfg = load_config(CONFIG, {"workdir": str(workdir), "similarity.dataset_features.model": "chgnet",
                               "similarity.metrics": ["rsa", "cka", "csi", "csi_graph"],
                               "transfer.budget": {"total": 120, "splits": [[60, 2], [30, 4]], "pool_per_task": 40,
                                                   "mixture": 0.3333},
                               "transfer.paper_tables": [{"table": "002/facts", "study": "budget"}]})
    out = run_transfer(cfg, ["budget"])
    r = out["studies"]["budget"]
    assert r["pick_metric"] == "csi" and r["pick_metrics"] == ["csi", "csi_graph"] and r["split"] == [60, 2]
    csi = np.asarray(first_run.matrices["csi"])
    for t, e in r["targets"].items():
        others = [s for s in TASKS if s != t]
        i = first_run.tasks.index(t)
        assert e["picked"] == min(others, key=lambda s: csi[i, first_run.tasks.index(s)])  # lowest CSI first
        arms = {k: v for k, v in e["curves"].items() if k != "scratch"}
        picks = {e["picks"][m]["source"] for m in r["pick_metrics"]}
        assert sorted(arms) == sorted([f"{s} 60x2" for s in others] + ["all others 60x2", "all others 30x4"]
                                      + [f"{s} 30x4" for s in picks] + ["aligned + misaligned 60x2"])
        mix = e["mixture"]  # paper 002's mixture: the pick plus the last-ranked source, 1/3 of the labels from it
        assert mix["aligned"] == e["picked"] and mix["misaligned"] != mix["aligned"] and mix["samples_seen"] == 120
        assert mix["labels"][1] == round(mix["labels"][0] / 2) and len(e["fold_gain"]["mixture"]) == 1
        assert {v["samples_seen"] for v in arms.values()} == {120}  # one budget for every arm
        assert np.isfinite(e["picked_vs_all_others"]["mean"])
        # the expected random source is the mean over the target's single sources; the hindsight best their max
        singles = [arms[f"{s} 60x2"]["gain_mean"] * 100 for s in others]
        assert e["random_gain"] == pytest.approx(np.mean(singles)) and e["best_gain"] == pytest.approx(max(singles))
    for m in r["pick_metrics"]:
        best = r["controls"][m]["best"]
        assert best["wins"] == 0 and best["ties"] == sum(e["picks"][m]["source"] == e["measured_best"]
                                                         for e in r["targets"].values())  # it can only be tied
        assert set(r["controls"][m]) == {"all_others", "random", "best"}  # one fold: no other folds to choose on
        lo, hi = r["controls"][m]["random"]["share_ci"]
        assert 0 <= lo <= r["controls"][m]["random"]["wins"] / 3 <= hi <= 1
    assert r["pick_vs_pick"]["metrics"] == ["csi", "csi_graph"] and r["pick_vs_pick"]["n"] == 3
    assert set(r["n_vs_e"]["30x4"]) == {"csi pick", "csi_graph pick", "all others"}
    assert set(r["recommendation"]["recommenders"]) >= {"csi", "rsa", "cka"}
    facts = {f["key"]: f for f in r["paper_comparison"]["002/facts"]["rows"]}
    assert facts["pretrain_samples"]["ours"] == 60 and facts["n_sweep"]["ours"] == [30, 60]
    assert Path(out["paths"]["budget_recommendation_md"]).is_file() and Path(out["paths"]["budget_gain"]).is_file()
    md = Path(out["paths"]["markdown"]).read_text()
    assert "Budget study" in md and "random single source (expected)" in md and "N vs E" in md
    assert "## Verdicts against paper 002" in md and "alone beats aligned + misaligned: **" in md




def test_budget_controls_choose_on_other_folds() -> None:
    """The controls from per-fold gains: the expected random source, the hindsight best, and the best
    chosen on the other folds and scored on the held-out one."""
    from tasksim_ray.transfer.studies.budget import controls

    got = controls({"a": np.array([10.0, 0.0, 0.0]), "b": np.array([0.0, 4.0, 4.0]), "c": np.array([1.0, 1.0, 1.0])})
    assert np.allclose(got["random"], [11 / 3, 5 / 3, 5 / 3])
    assert np.allclose(got["best"], [10.0, 0.0, 0.0])  # a: mean 3.33 beats b's 2.67
    assert np.allclose(got["best_other_folds"], [0.0, 0.0, 0.0])  # fold 0 chooses b, folds 1 and 2 choose a
def test_ptft_study_with_alignn_pairwise_mpt_ood_and_strategies(tmp_path: Path) -> None:
    """ALIGNN per-task models as pairwise sources, MPT over all other in-distribution tasks with two
    added head layers, an out-of-distribution target that takes no source sharing a task group with
    it, the pretraining-size sweep, the paper's tables beside ours, and the paper's four strategies."""
    from tasksim_ray.transfer.runner import run_transfer

    ood, jarvis = "jarvis_2d_exfoliation", "jarvis_2d_eform"
    strategies = {"S1 all layers": {}, "S2 new MLP before the head": {"strategy": "head", "added_layers": 1},
                  "S3 last layer": {"strategy": "head"},
                  "S4 two-body": {"strategy": "layers", "layers": ["alignn.alignn_layers.*.node_update.*",
                                                                   "alignn.gcn_layers.*"]},
                  "S4 three-body": {"strategy": "layers", "layers": ["alignn.alignn_layers.*.edge_update.*"]}}
    cfg = load_config(CONFIG, {
        "workdir": str(tmp_path), "model.backbone": "alignn", "train.max_epochs": 2,
        "model.params": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 8,
                         "max_neighbors": 6, "cutoff": 5.0, "ffn_layers": 1},
        "transfer.ood": [ood], "transfer.task_groups": {"jarvis_dft": [jarvis, ood], "2d": [jarvis, ood]},
        "transfer.ptft": {"pt_sources": ["expt_eform"], "pt_sizes": [12, 24], "pt_epochs": 1, "mpt_added_layers": 2},
        "transfer.finetune.max_epochs": 2, "transfer.strategy_pairs": [[jarvis, "expt_eform"]],
        "transfer.variants": strategies,
        "transfer.paper_tables": [{"table": "004/table1_mae", "study": "ptft", "aliases": {"jarvis_2d_gap": ood},
                                   "methods": {"fe_100k": "expt_eform"}}]})
    out = run_transfer(cfg, ["ptft", "strategies"])
    r = out["studies"]["ptft"]
    sources = [t for t in TASKS if t != ood]
    assert r["sources"] == sources and r["targets"] == TASKS and r["mpt"] == "MPT 60x2" and r["mpt_added_layers"] == 2
    gain = np.array(r["fixed_gain"], dtype=float)
    assert gain.shape == (3, 2) and np.isnan(gain[0, 0]) and np.isnan(gain[1, 1])
    assert np.isfinite(gain[0, 1]) and np.isfinite(gain[1, 0])
    # the OOD target shares the JARVIS-2D groups with jarvis_2d_eform: never its source, nor in its MPT
    assert np.isfinite(gain[2, 0]) and np.isnan(gain[2, 1])
    e = r["per_target"][ood]
    assert e["ood"] and e["pairs"] == 1 and e["mpt_sources"] == ["expt_eform"] and e["excluded_by_group"] == [jarvis]
    assert sorted(e["curves"]) == sorted(["scratch", "expt_eform", "MPT 60x2"])
    assert r["per_target"][jarvis]["mpt_sources"] == ["expt_eform"]
    assert set(e["per_size"]["scratch"]) == {"10", "30"} and e["per_size"]["scratch"]["30"]["seeds"] == 1
    # the pretraining-size sweep: expt_eform alone on 12 and 24 crystals, fine-tuned at 30 on its targets
    sweep = {(s["source"], s["target"]): s["gain"] for s in r["pt_size_sweep"]}
    assert set(sweep) == {("expt_eform", jarvis), ("expt_eform", ood)}
    assert set(sweep[("expt_eform", ood)]) == {"12", "24", "per-task model"}
    assert all(np.isfinite(g["mean"]) for g in sweep[("expt_eform", ood)].values())
    rows = out["studies"]["ptft"]["paper_comparison"]["004/table1_mae"]["rows"][0]
    assert rows["task"] == ood and {c["column"] for c in rows["cells"] if c["ours_mean"] is not None} == {
        "scratch", "mpt", "fe_100k"}
    assert r["in_distribution_targets"] == 2 and r["pairs"] == 3
    pair = out["studies"]["strategies"]["pairs"][0]
    assert sorted(pair["variants"]) == sorted(strategies)
    md = Path(out["paths"]["markdown"]).read_text()
    assert "multi-property pretraining" in md and "Fine-tuning size sweep" in md and "Pretraining size sweep" in md
    assert "Beside the paper: 004/table1_mae" in md
    assert Path(out["paths"]["ptft_gain"]).stat().st_size > 1000 and Path(out["paths"][f"curves_ptft_{ood}"]).is_file()


def test_ood_pair_sharing_a_group_is_refused() -> None:
    from tasksim_ray.config import parse_config
    from tasksim_ray.errors import TasksimError

    with pytest.raises(TasksimError, match=r"pair \(b, a\): source shares task group \['2d'\]"):
        parse_config({"transfer": {"ood": ["b"], "task_groups": {"2d": ["a", "b"]}, "ptft": {"pairs": [["b", "a"]]}}})
