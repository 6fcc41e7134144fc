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
SETTINGS = {"data.path": str(TINY), "data.files": {},
            "data.split.max_train": 10, "transfer.tasks": [TASK], "transfer.finetune.max_epochs": 1,
            "transfer.finetune.batch_size": 5}


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_foundation_study_runs_every_recipe_and_reruns_from_cache(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "foundation_ft.yaml", SETTINGS | {"workdir": str(tmp_path)})
    out = run_transfer(cfg, ["foundation"], Console(quiet=True))
    r = out["studies"]["foundation"]
    both = "chgnet: full + L2-SP + BSS"
    recipes = ["scratch", "chgnet: full", both]
    points = [f"{both} [l2sp={a:g}, bss={b:g}]" for a in (1e-4, 1e-3) for b in (1e-4, 1e-3)]
    assert r["methods"] == recipes and r["seeds"] == [0, 1]
    # every grid point trained in every seed; the variant's result is the point validation chose
    assert {(c["recipe"], c["fold"]) for c in r["cells"]} == {(m, s) for m in [*recipes[:2], *points] for s in (0, 1)}
    e = r["targets"][TASK]
    assert e["n"] == [10, 6, 14]  # 70 rows: test fold 14, validation 10% of the other 56, train capped at 10
    search = r["grid"][both][TASK]
    for seed in ("0", "1"):
        val = {label: p["val_mae"][seed] for label, p in search["points"].items()}
        best = min(val, key=val.get)
        assert search["chosen"][seed] == search["points"][best]["weights"]
        test = search["points"][best]["test_mae"][seed]
        assert e[both]["values"][int(seed)] == test
    assert r["cost"][both]["cells"] == 8
    for m in recipes[1:]:
        assert len(e[m]["values"]) == 2 and np.isfinite(e[m]["gain_mean"]) and np.isfinite(e[m]["se"])
        assert all(v > 0 for v in e[m]["drift"].values())  # all layers train
    assert "drift" not in e["scratch"]
    profile = r["depth_profile"]
    assert profile["layers"][0] == "atom_embedding" and len(profile["layers"]) == 5
    assert all(np.isfinite(profile["models"]["chgnet"][TASK]["mean"]))
    md = Path(out["paths"]["markdown"]).read_text()
    assert f"| {both} |" in md and "Depth profile: chgnet" in md and "Penalty weights of" in md
    assert "Layer drift beside the paper (Fig. 2b)" in md
    assert Path(out["paths"]["layer_drift"]).stat().st_size > 0
    assert Path(out["paths"]["depth_profile_chgnet"]).stat().st_size > 0
    cells = sorted((tmp_path / "artifacts" / "cells").glob("*/result.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    assert len(cells) == 12
    again = run_transfer(cfg, ["foundation"], Console(quiet=True))["studies"]["foundation"]
    assert again["cells"] == r["cells"] and [c.stat().st_mtime_ns for c in cells] == stamps


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
