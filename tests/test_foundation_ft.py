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
SETTINGS = {"data.path": str(TINY),
            "data.split.max_train": 10, "transfer.tasks": [TASK], "transfer.finetune.max_epochs": 1,
            "transfer.finetune.batch_size": 5}


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_foundation_study_runs_every_recipe_and_reruns_from_cache(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "foundation_ft.yaml", SETTINGS | {"workdir": str(tmp_path)})
    out = run_transfer(cfg, ["foundation"], Console(quiet=True))
    r = out["studies"]["foundation"]
    recipes = ["scratch", "chgnet: full", "chgnet: last", "chgnet: head", "chgnet: full + L2-SP", "chgnet: full + BSS"]
    assert r["methods"] == recipes and r["seeds"] == [0, 1]
    assert {(c["recipe"], c["fold"]) for c in r["cells"]} == {(m, s) for m in recipes for s in (0, 1)}
    e = r["targets"][TASK]
    assert e["n"] == [10, 6, 14]  # 70 rows: test fold 14, validation 10% of the other 56, train capped at 10
    for m in recipes[1:]:
        assert len(e[m]["values"]) == 2 and np.isfinite(e[m]["gain_mean"]) and np.isfinite(e[m]["se"])
    drift = {m: e[m]["drift"] for m in recipes[1:]}
    assert "drift" not in e["scratch"]
    assert all(v == 0 for v in drift["chgnet: head"].values())  # the encoder was frozen
    last = {g for g, v in drift["chgnet: last"].items() if v > 0}  # the config's last block: conv 3 + readout
    assert last == {"chgnet.atom_conv_layers.3", "chgnet.readout_norm"}
    assert all(v > 0 for v in drift["chgnet: full"].values())
    profile = r["depth_profile"]
    assert profile["layers"][0] == "atom_embedding" and len(profile["layers"]) == 5
    assert all(np.isfinite(profile["models"]["chgnet"][TASK]["mean"]))
    md = Path(out["paths"]["markdown"]).read_text()
    assert "| chgnet: full + BSS |" in md and "Depth profile: chgnet" in md
    assert Path(out["paths"]["layer_drift"]).stat().st_size > 0
    assert Path(out["paths"]["depth_profile_chgnet"]).stat().st_size > 0
    cells = sorted((tmp_path / "artifacts" / "cells").glob("*/result.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    assert len(cells) == 12
    again = run_transfer(cfg, ["foundation"], Console(quiet=True))["studies"]["foundation"]
    assert again["cells"] == r["cells"] and [c.stat().st_mtime_ns for c in cells] == stamps


def test_bad_study_config_is_one_line_naming_the_key() -> None:
    with pytest.raises(TasksimError, match=r"transfer.methods .variants. fine-tunes the transfer.foundation"):
        parse_config({"transfer": {"methods": ["scratch", "variants"]}})
    with pytest.raises(TasksimError, match=r"key 'data.split': split.seeds are kfold test folds: each in \[0, 5\)"):
        parse_config({"data": {"split": {"kind": "kfold", "seeds": [5]}}})
