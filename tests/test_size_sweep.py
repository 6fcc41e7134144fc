"""The foundation pages' size sweep (results/foundation_ft/size_sweep.py) is generated from the pages it
names: rerun on the committed pages it reproduces the committed size_sweep.json, and every row's gain and
verdict is its page's own paired result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .conftest import REPO

SCRIPT = REPO / "results" / "foundation_ft" / "size_sweep.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("size_sweep", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_size_sweep_reproduces_from_the_committed_pages(tmp_path: Path) -> None:
    sweep = _module()
    result = sweep.sweep(sweep.PAGES)
    committed = json.loads((SCRIPT.parent / "size_sweep.json").read_text())
    assert json.loads(json.dumps(result)) == committed
    assert sorted(result["pages"].values()) == [100, 300]
    for key, rows in result["rows"].items():
        assert [r["n_train"] for r in rows] == [100, 300], key
        for r in rows:
            page = json.loads((REPO / "results" / r["page"] / "foundation.json").read_text())["foundation"]
            g = page["paired"][r["task"]][r["comparison"]]
            assert (r["gain"], r["ci"], r["verdict"]) == (g["mean"], g["ci"], g["verdict"])
        first = next((r["n_train"] for r in rows if r["verdict"] == "better"), None)
        assert result["first_n_better"][key] == first
    assert (SCRIPT.parent / "size_sweep.md").read_text() == sweep.markdown(committed)
