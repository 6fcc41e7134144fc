"""Every benchmark script runs at its smoke size and writes the JSON keys its README section quotes,
so no benchmark rots unnoticed. The scripts run as subprocesses in two lanes side by side, those that
start a local Ray one after another (several Ray instances starting at once on two cores time out),
the others beside them; each writes to a temporary folder: the committed figures in
benchmarks/results are never touched. A script whose peer (the ``bench`` extra) is not installed runs
its own side; one run hides chemprop on purpose to keep that path working."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
# the crystal benchmarks need the published data beside the repository (or where the variable says)
SHARED = Path(os.environ.get("TASKSIM_SHARED_DATA", REPO.parent / "shared" / "data"))
# run name -> (script, needs the shared data, peer package hidden from it)
RUNS = {"train_throughput": ("train_throughput.py", False, None),
        "train_throughput (no chemprop)": ("train_throughput.py", False, "chemprop"),
        "transfer_cell": ("transfer_cell.py", False, None),
        "similarity": ("similarity.py", False, None),
        "embed_throughput": ("embed_throughput.py", False, None),
        "search": ("search.py", False, None),
        "crystal_epoch": ("crystal_epoch.py", True, None),
        "graph_cache": ("graph_cache.py", True, None),
        "cgcnn_expt_eform": ("cgcnn_expt_eform.py", True, None)}
STARTS_RAY = {"similarity", "embed_throughput", "search"}


def readme_keys() -> dict[str, list[str]]:
    """script -> the dotted JSON keys its README section quotes on its ``JSON keys:`` line."""
    text = (BENCH / "README.md").read_text()
    out: dict[str, list[str]] = {}
    for section in re.split(r"\n## ", text)[1:]:
        script = re.search(r"\(`(\w+\.py)`\)", section.splitlines()[0])
        line = re.search(r"^JSON keys: (.+)$", section, re.M)
        if script and line:
            out[script.group(1)] = re.findall(r"`([^`]+)`", line.group(1))
    return out


def lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _run(name: str, tmp: Path) -> dict[str, Any]:
    script, _, hide = RUNS[name]
    out = tmp / (re.sub(r"\W+", "_", name) + ".json")
    paths = [str(REPO)]
    if hide:  # a package of the peer's name that fails to import, as when the extra is not installed
        stub = tmp / f"hide_{hide}" / hide
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text(f"raise ImportError('{hide} hidden by the test')\n")
        paths.insert(0, str(stub.parent))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OUT")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, str(BENCH / script), "--smoke", "--out", str(out)]
    if RUNS[name][1]:
        cmd += ["--data", str(SHARED)]
    start = time.perf_counter()
    # from the repository root: configs name their data relative to it
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return {"rc": proc.returncode, "log": (proc.stdout + proc.stderr)[-3000:], "seconds": time.perf_counter() - start,
            "json": json.loads(out.read_text()) if out.is_file() else None}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    results = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    tmp = tmp_path_factory.mktemp("bench")
    names = [n for n, (_, shared, _) in RUNS.items() if not shared or SHARED.is_dir()]
    lanes = [[n for n in names if n in STARTS_RAY], [n for n in names if n not in STARTS_RAY]]
    with ThreadPoolExecutor(len(lanes)) as pool:
        done = pool.map(lambda lane: [(n, _run(n, tmp)) for n in lane], lanes)
    runs = {n: r for lane in done for n, r in lane}
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before, "a smoke run wrote benchmarks/results"
    return runs


def test_every_script_has_a_smoke_run_and_quoted_keys() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")}
    keys = readme_keys()
    assert scripts == {s for s, _, _ in RUNS.values()}, "a benchmark script without a smoke run here"
    assert scripts == set(keys), "a benchmark section without its 'JSON keys:' line"
    table = (BENCH / "README.md").read_text().split("\n## ")[0]
    assert all(f"`{s}`" in table for s in scripts), "a script missing from the README's history table"


@pytest.mark.parametrize("name", list(RUNS))
def test_smoke_run_writes_the_quoted_keys(smoke_runs: dict[str, dict[str, Any]], name: str) -> None:
    if name not in smoke_runs:
        pytest.skip(f"needs the shared data at {SHARED}")
    run = smoke_runs[name]
    assert run["rc"] == 0, f"{name} failed:\n{run['log']}"
    assert run["json"] is not None, f"{name} wrote no JSON:\n{run['log']}"
    script, _, hide = RUNS[name]
    for key in readme_keys()[script]:
        try:
            lookup(run["json"], key)
        except (KeyError, IndexError, TypeError):
            pytest.fail(f"{name}: JSON lacks '{key}' (quoted in benchmarks/README.md)")
    if hide:  # the JSON says which side ran
        assert hide in run["json"]["peer"] and "not installed" in run["json"]["peer"]
