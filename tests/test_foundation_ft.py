"""The foundation fine-tuning study (configs/foundation_ft.yaml) end to end on a tiny crystal task:
CHGNet's shipped weights fine-tuned with each variant against the same architecture from random
init, on kfold splits; every cell cached, drift recorded per layer group, the depth profile scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasksim_ray.config import load_config, parse_config
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.progress import Console
from tasksim_ray.transfer.runner import run_transfer

from .conftest import REPO

TASK = "jarvis_2d_exfoliation"  # the tiny file's known alias
TINY = REPO / "tests" / "data" / "crystals" / "tiny_tasks" / "jarvis_dft_2d_exfol_energy.json.gz"
SETTINGS = {"data.path": str(TINY), "data.files": {}, "data.split.max_train": 10, "data.split.seeds": [0, 1],
            "transfer.tasks": [TASK], "transfer.foundation": ["chgnet"], "transfer.foundation_scratch": ["chgnet"],
            "transfer.variant_models": {"full": ["chgnet"], "full + L2-SP + BSS": ["chgnet"]}, "transfer.finetune.max_epochs": 2,
            "transfer.finetune.patience": 1, "transfer.finetune.warmup_epochs": 1, "transfer.finetune.batch_size": 5,
            "transfer.lr_grid": [1e-4, 1e-3], "transfer.penalty_grid": {"full + L2-SP + BSS": {"l2sp": [1e-4, 1.0],
                                                                                               "bss": [0.1]}}}


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_foundation_study_runs_every_arm_and_reruns_from_cache(tmp_path: Path) -> None:
    """The config's design on a tiny task: the mean predictor, CHGNet from scratch, its linear probe, full
    fine-tuning over the learning-rate grid and L2-SP + BSS over its penalty grid; every grid chosen on the
    first split seed's validation split and the other seed trains each arm's chosen point only."""
    cfg = load_config(REPO / "configs" / "foundation_ft.yaml", SETTINGS | {"workdir": str(tmp_path)})
    out = run_transfer(cfg, ["foundation"], Console(quiet=True))
    r = out["studies"]["foundation"]
    both = "chgnet: full + L2-SP + BSS"
    arms = ["mean predictor", "chgnet: scratch", "chgnet: linear probe", "chgnet: full", both]
    assert r["methods"] == arms and r["seeds"] == [0, 1]
    lrs = [f"[lr={x:g}]" for x in (1e-4, 1e-3)]
    points = {"chgnet: scratch": [f"chgnet: scratch {x}" for x in lrs],
              "chgnet: full": [f"chgnet: full {x}" for x in lrs], both: [f"{both} [l2sp={a:g}, bss=0.1]" for a in (1e-4, 1.0)]}
    ran = {(c["recipe"], c["fold"]) for c in r["cells"]}
    for arm, labels in points.items():  # seed 0: every point; seed 1: the point seed 0's validation chose
        assert {(lbl, 0) for lbl in labels} <= ran
        val0 = {lbl: next(c["val_mae"] for c in r["cells"] if c["recipe"] == lbl and c["fold"] == 0) for lbl in labels}
        chosen = min(val0, key=val0.get)
        assert [lbl for lbl in labels if (lbl, 1) in ran] == [chosen]
        assert r["grid"][arm][TASK]["chosen"]["0"] == r["grid"][arm][TASK]["chosen"]["1"]
    e = r["targets"][TASK]
    assert e["n"] == [10, 6, 14]  # 70 rows: test fold 14, validation 10% of the other 56, train capped at 10
    for m in arms:
        assert len(e[m]["values"]) == 2 and all(np.isfinite(e[m]["values"]))
    for m in ("chgnet: full", both):
        assert all(v > 0 for v in e[m]["drift"].values())  # all layers train
    conv = r["convergence"][TASK]
    assert set(conv) == {"chgnet: scratch", "chgnet: full", both}
    assert all(x["last"] == (x["best_epoch"] == x["epochs_run"] - 1) for per in conv.values() for x in per.values())
    paired = r["paired"][TASK]
    assert set(paired) == {"chgnet: linear probe vs chgnet: scratch", "chgnet: linear probe vs mean predictor",
                           "chgnet: full vs chgnet: scratch", f"{both} vs chgnet: scratch"}
    g = paired["chgnet: full vs chgnet: scratch"]
    base, ft = np.array(e["chgnet: scratch"]["values"]), np.array(e["chgnet: full"]["values"])
    assert g["values"] == pytest.approx((100 * (base - ft) / base).tolist()) and g["ci"][0] <= g["mean"] <= g["ci"][1]
    md = Path(out["paths"]["markdown"]).read_text()
    for text in ("Improvement over the baseline, paired by split seed", "Grid search of chgnet: full",
                 "Spread of validation MAE across the grid", "Convergence: epoch of the best validation MAE"):
        assert text in md
    cells = sorted((tmp_path / "artifacts" / "cells").glob("*/result.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    again = run_transfer(cfg, ["foundation"], Console(quiet=True))["studies"]["foundation"]
    assert again["cells"] == r["cells"] and [c.stat().st_mtime_ns for c in cells] == stamps


def test_grid_choice_is_per_arm_and_reads_validation_only() -> None:
    """Each arm keeps the point with its lowest validation MAE (test MAE never read), and the other
    seeds train exactly that point."""
    from tasksim_ray.transfer.cells import CellData, Recipe
    from tasksim_ray.transfer.grid import chosen_points, keep_chosen, select_grid

    grid = {f"{arm} [lr={lr:g}]": (arm, {"lr": lr}) for arm in ("a", "b") for lr in (1e-4, 1e-3)}
    val = {"a [lr=0.0001]": 1.0, "a [lr=0.001]": 2.0, "b [lr=0.0001]": 2.0, "b [lr=0.001]": 1.0}
    cells = [{"recipe": lbl, "target": "t", "fold": 0, "val_mae": v, "test_mae": 1 / v}
             for lbl, v in val.items()]  # test prefers the other point in both arms
    assert chosen_points(cells, grid) == {("a", "t"): {"lr": 1e-4}, ("b", "t"): {"lr": 1e-3}}
    chosen, search = select_grid(cells, grid)
    assert {c["recipe"]: c["grid_point"] for c in chosen} == {"a": {"lr": 1e-4}, "b": {"lr": 1e-3}}
    assert search["a"]["t"]["chosen"] == {"0": {"lr": 1e-4}}

    def cell(fold: int) -> CellData:
        empty = np.zeros(0, dtype=int)
        return CellData("t", fold, None, empty, empty, empty, empty, empty, empty, "k")

    jobs = [(cell(f), Recipe("scratch", lbl)) for f in (0, 1) for lbl in grid]
    kept = keep_chosen(jobs, grid, 0, chosen_points(cells, grid))
    assert [(c.fold, r.label) for c, r in kept if c.fold == 1] == [(1, "a [lr=0.0001]"), (1, "b [lr=0.001]")]
    assert len([1 for c, _ in kept if c.fold == 0]) == 4


def test_paper_table_beside_ours_with_its_relative_improvement() -> None:
    """paper_rows puts scratch and the fine-tuned recipe beside Table 1's MACE-RI and MACE-MP-0; the
    relative improvement column is recomputed from ours by the paper's definition (RI - MP-0) / RI."""
    from tasksim_ray.papers import side_by_side
    from tasksim_ray.transfer.studies.foundation import FoundationStudy

    both = "chgnet: full + L2-SP + BSS"
    result = {"methods": ["scratch", both], "targets": {
        "my_gap": {"units": "eV", "n": [1, 1, 1], "best": both,
                   "scratch": {"mean": 0.8, "std": 0.1, "seeds": 2}, both: {"mean": 0.3, "std": 0.05, "seeds": 2}}}}
    rows = FoundationStudy("foundation").paper_rows(result)
    assert rows == {"my_gap": {"scratch": result["targets"]["my_gap"]["scratch"], both: result["targets"]["my_gap"][both]}}
    side = side_by_side("003/table1", rows, {"mp_gap": "my_gap"}, {"mace_ri": "scratch", "mace_mp0": both})
    row = next(x for x in side.data["rows"] if x["row"] == "mp_gap")
    rel = next(c for c in row["cells"] if c["column"] == "rel_ri_mp0")
    assert rel["ours_mean"] == pytest.approx(100 * (0.8 - 0.3) / 0.8) and rel["sign_agrees"] is True
    assert row["agrees"] is True and side.data["winner_agreement"] == 1


def test_penalty_grid_and_two_regularisers_validate() -> None:
    grid = {"transfer": {"foundation": ["chgnet"], "methods": ["scratch", "variants"],
                         "variants": {"both": {"regularizers": [{"kind": "l2sp"}, {"kind": "bss"}]}}}}
    cfg = parse_config(grid | {"transfer": grid["transfer"] | {"penalty_grid": {"both": {"l2sp": [0.1, 0.01]}}}})
    ft = cfg.transfer.variant_configs()["both"].with_weights({"l2sp": 0.1})
    assert [(r.kind, r.weight) for r in ft.penalties()] == [("l2sp", 0.1), ("bss", 0.01)]
    with pytest.raises(TasksimError, match=r"penalty_grid 'both': grid its variant's regularisers"):
        parse_config({"transfer": grid["transfer"] | {"penalty_grid": {"both": {"l2sp": []}}}})
    with pytest.raises(TasksimError, match=r"penalty_grid 'nope'"):
        parse_config({"transfer": grid["transfer"] | {"penalty_grid": {"nope": {"bss": [1.0]}}}})
    with pytest.raises(TasksimError, match=r"give regularizer or regularizers, not both"):
        parse_config({"transfer": {"finetune": {"regularizer": {"kind": "bss"}, "regularizers": [{"kind": "l2sp"}]}}})


def test_bad_study_config_is_one_line_naming_the_key() -> None:
    with pytest.raises(TasksimError, match=r"transfer.methods .variants. fine-tunes the transfer.foundation"):
        parse_config({"transfer": {"methods": ["scratch", "variants"]}})
    with pytest.raises(TasksimError, match=r"key 'data.split': split.seeds are kfold test folds: each in \[0, 5\)"):
        parse_config({"data": {"split": {"kind": "kfold", "seeds": [5]}}})


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_a_constructed_binary_target_is_scored_by_roc_auc_everywhere(tmp_path: Path) -> None:
    """A 0/1 task (here: exfoliation energy above the median, derived by ``data.binary``) trains with the
    logistic loss and is scored by ROC-AUC and accuracy in the cells, the tables and the paired verdicts."""
    import gzip
    import json

    table = json.loads(gzip.decompress(TINY.read_bytes()))
    median = float(np.median([r["exfoliation_en"] for r in table["data"]]))
    cfg = load_config(REPO / "configs" / "foundation_ft.yaml", SETTINGS | {
        "workdir": str(tmp_path / "run"), "data.binary": {"is_high": {"task": TASK, "above": median}},
        "data.split.seeds": [0, 1],
        "transfer.tasks": ["is_high"], "transfer.lr_grid": [1e-3], "transfer.variants": {"full": {}},
        "transfer.penalty_grid": {}, "transfer.variant_models": {}, "transfer.paper_tables": []})
    out = run_transfer(cfg, ["foundation"], Console(quiet=True))
    r = out["studies"]["foundation"]
    e = r["targets"]["is_high"]
    assert e["binary"] and e["units"] == "1 - ROC-AUC"
    for arm in r["methods"]:
        assert all(0 <= v <= 1 for v in e[arm]["auc"]["values"] + e[arm]["acc"]["values"])
        assert e[arm]["values"] == pytest.approx([1 - v for v in e[arm]["auc"]["values"]])
    assert e["mean predictor"]["auc"]["values"] == [0.5, 0.5]
    g = r["paired"]["is_high"]["chgnet: full vs chgnet: scratch"]
    auc_ft, auc_rs = (np.array(e[m]["auc"]["values"]) for m in ("chgnet: full", "chgnet: scratch"))
    assert g["values"] == pytest.approx((100 * (auc_ft - auc_rs) / auc_rs).tolist())  # the paper's (MP-0 - RI) / RI
    cells = [c for c in r["cells"] if c["recipe"] == "chgnet: full [lr=0.001]"]
    assert cells and all({"test_auc", "test_acc"} <= set(c) for c in cells)
    assert "Binary targets: ROC-AUC and accuracy" in Path(out["paths"]["markdown"]).read_text()


def test_the_count_across_tasks_comes_from_each_tasks_paired_verdict() -> None:
    from tasksim_ray.transfer.foundation_report import across_tasks, paired_improvements, paired_markdown

    def task(ft: list[float]) -> dict:
        scratch = {"values": [10.0, 10.0, 10.0]}
        return {"chgnet: scratch": scratch, "chgnet: full": {"values": ft}}

    result = {"methods": ["chgnet: scratch", "chgnet: full"], "targets": {
        "a": task([8.0, 8.1, 7.9]), "b": task([8.0, 12.0, 9.0]), "c": task([12.0, 12.1, 11.9]), "d": task([7.0, 7.2, 6.9])}}
    paired = paired_improvements(result)
    assert across_tasks(paired) == {"chgnet: full vs chgnet: scratch": {"better": ["a", "d"], "undecided": ["b"],
                                                                        "worse": ["c"]}}
    text = "\n".join(paired_markdown(paired, [0, 1, 2]))
    assert "| chgnet: full vs chgnet: scratch | 2 of 4 | 1 of 4 | 1 of 4 | better: a, d; undecided: b; worse: c |" in text
