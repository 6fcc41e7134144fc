"""Bad input through ``tasksim run``: one line on stderr naming the file, row or key, exit 2, and
nothing trained or half-written (the README's promise). Every case stops before the first Ray task."""

from __future__ import annotations

import errno
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.cli.app import user_errors

from .conftest import TINY_CONFIG, TINY_DATA

Case = Callable[[Path], list[str]]  # tmp folder -> extra CLI arguments


def _csv(tmp: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> list[str]:
    frame = change(pd.read_csv(TINY_DATA).head(120)[["mol_id", "smiles", "mu", "alpha", "homo"]].copy())
    path = tmp / "data.csv"
    frame.to_csv(path, index=False)
    return ["--set", f"data.path={path}", "--set", "data.targets=[mu, alpha, homo]"]


def _set(frame: pd.DataFrame, column: str, values: object, rows: slice = slice(None)) -> pd.DataFrame:
    frame.loc[frame.index[rows], column] = values
    return frame


def _probes(tmp: Path, content: bytes | None) -> list[str]:
    path = tmp / "probes.txt"
    if content is not None:
        path.write_bytes(content)
    return ["--set", "probe.source=file", "--set", f"probe.path={path}"]


def _config_bytes(tmp: Path) -> list[str]:
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ["CONFIG", str(tmp / "latin1.yaml")]


def _workdir_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["--set", f"workdir={tmp / 'afile'}"]


def _truncated_gz(tmp: Path) -> list[str]:
    path = tmp / "table.json.gz"
    path.write_bytes(gzip.compress(b'{"columns": ["structure", "e"], "data": []}' * 20)[:40])
    return ["--set", "data.source=crystals", "--set", f"data.path={path}", "--set", "data.targets=[e]"]


def _empty_config(tmp: Path) -> list[str]:
    (tmp / "empty.yaml").write_text("")
    return ["CONFIG", str(tmp / "empty.yaml")]


def _duplicate_crystal_column(tmp: Path) -> list[str]:
    path = tmp / "table.json.gz"
    path.write_bytes(gzip.compress(b'{"columns": ["structure", "e", "e"], "data": []}'))
    return ["--set", "data.source=crystals", "--set", f"data.path={path}"]


def _renamed(frame: pd.DataFrame) -> pd.DataFrame:
    frame.columns = ["mol_id", "smiles", "mu", "mu", "homo"]  # pandas would read the second as mu.1
    return frame


def _duplicate_key(tmp: Path, extra: str) -> list[str]:
    (tmp / "twice.yaml").write_text(TINY_CONFIG.read_text() + extra)
    return ["CONFIG", str(tmp / "twice.yaml")]


def _crystals(tmp: Path, change: Callable[[list[dict]], object]) -> list[str]:
    """A gzip-JSON table of 40 rock-salt cells (lattice constant 4 to 5 A), changed by ``change``."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(0)
    rows = [{"structure": Structure(Lattice.cubic(4 + rng.random()), ["Na", "Cl"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict(),
             "e": float(rng.random()), "g": float(rng.random())} for _ in range(40)]
    change(rows)
    path = tmp / "cells.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"columns": ["structure", "e", "g"],
                                               "data": [list(r.values()) for r in rows]}).encode()))
    return ["--set", "data.source=crystals", "--set", f"data.path={path}", "--set", "model.backbone=cgcnn",
            "--set", "data.targets=[e, g]"]


def _lattice(rows: list[dict], row: int, matrix: list[list[float]]) -> None:
    rows[row]["structure"]["lattice"]["matrix"] = matrix


def _data_folder(tmp: Path, link: str, target: str) -> list[str]:
    folder = tmp / "data"
    folder.mkdir()
    pd.read_csv(TINY_DATA).head(120).to_csv(folder / "part1.csv", index=False)
    os.symlink(target, folder / link)
    return ["--set", f"data.path={folder}", "--set", "data.targets=[mu, alpha, homo]"]


def _with_units(frame: pd.DataFrame, column: str, unit: str) -> pd.DataFrame:
    frame[column] = [f"{v:.3g}{unit}" for v in frame[column]]
    return frame


LONG = "x" * 300

CASES: dict[str, tuple[Case, str]] = {
    "config-empty": (_empty_config, "empty.yaml: the config names no data: give data.source and data.path"),
    "duplicate-column": (lambda t: _csv(t, _renamed)[:2], "data.csv: column 'mu' appears more than once"),
    "duplicate-crystal-column": (_duplicate_crystal_column, "table.json.gz: column 'e' appears more than once"),
    "config-not-utf8": (_config_bytes, "not UTF-8"),
    "set-bad-yaml": (lambda t: ["--set", "train=[1, 2"], "--set train: value '[1, 2' is not valid YAML"),
    "set-into-a-value": (lambda t: ["--set", "train.max_epochs.x=1"], "'train.max_epochs' is a value"),
    "workdir-is-a-file": (_workdir_file, "is a file, not a folder"),
    "unknown-model-param": (lambda t: ["--set", "model.backbone=cgcnn", "--set", "model.params={bogus: 1}"],
                            "model.params: unknown key(s) ['bogus']"),
    "all-smiles-invalid": (lambda t: _csv(t, lambda f: _set(f, "smiles", "not-a-smiles")), "no valid molecule"),
    "target-all-nan": (lambda t: _csv(t, lambda f: _set(f, "mu", np.nan)), "target 'mu' has 0 labels"),
    "target-listed-twice": (lambda t: ["--set", "data.targets=[mu, alpha, mu]"], "['mu'] listed more than once"),
    "probe-not-utf8": (lambda t: _probes(t, b"CCO\n\xff\xfe\n"), "probes.txt: probe file is not UTF-8"),
    "header-no-rows": (lambda t: _csv(t, lambda f: f.iloc[:0]), "data.csv: table has a header but no rows"),
    "duplicate-ids": (lambda t: _csv(t, lambda f: _set(f, "mol_id", "gdb_1", slice(3, 5))),
                      "molecule id 'gdb_1' is on several data rows (4, 5)"),
    "probe-missing": (lambda t: _probes(t, None), "probes.txt: probe file not found"),
    "probe-two-molecules": (lambda t: _probes(t, b"CCO\nCCN\n"), "at least 3 are needed"),
    "label-inf": (lambda t: _csv(t, lambda f: _set(f, "alpha", np.inf, slice(7, 8))),
                  "data.csv, data row 8: target 'alpha' is inf"),
    "target-two-labels": (lambda t: _csv(t, lambda f: _set(f, "homo", np.nan, slice(2, None))),
                          "target 'homo' has 2 labels"),
    "target-constant": (lambda t: _csv(t, lambda f: _set(f, "homo", 0.25)), "target 'homo' is constant"),
    "single-task": (lambda t: ["--set", "data.targets=[mu]"], "similarity needs at least 2 tasks"),
    "truncated-json-gz": (_truncated_gz, "table.json.gz: truncated gzip file"),
    # older mistakes that got through (issue 33), and cases of the same classes
    "unit-suffix-default-targets": (lambda t: [*_csv(t, lambda f: _with_units(f, "mu", " D")), "--set",
                                               "data.targets=null"], "data.csv: column 'mu' holds numbers with a unit"),
    "unit-suffix-named-target": (lambda t: _csv(t, lambda f: _with_units(f, "alpha", "bohr^3")),
                                 "column 'alpha' holds numbers with a unit ("),
    "unit-suffix-crystal-table": (lambda t: [*_crystals(t, lambda rows: [r.update(g=f"{r['g']:.3f} eV")
                                                                         for r in rows]), "--set", "data.targets=null"],
                                  "cells.json.gz: column 'g' holds numbers with a unit ('"),
    "config-duplicate-key": (lambda t: _duplicate_key(t, "seed: 3\n"), "twice.yaml: key 'seed' appears twice"),
    "config-duplicate-nested-key": (lambda t: _duplicate_key(t, "preprocess:\n  n_folds: 2\n  n_folds: 3\n"),
                                    "key 'n_folds' appears twice"),
    "config-duplicate-section": (lambda t: _duplicate_key(t, "model:\n  depth: 3\n"), "key 'model' appears twice"),
    "zero-volume-lattice": (lambda t: _crystals(t, lambda rows: _lattice(rows, 5, [[4, 0, 0], [0, 4, 0], [0, 0, 0]])),
                            "cells.json.gz: row 5: the lattice has volume 0 A^3"),
    "flat-lattice": (lambda t: _crystals(t, lambda rows: _lattice(rows, 7, [[4, 0, 0], [0, 4, 0], [4, 4, 0]])),
                     "row 7: the lattice has volume 0 A^3"),
    "data-folder-self-link": (lambda t: _data_folder(t, "self", "self"), "data/self: a symbolic link that loops"),
    "data-folder-dangling-link": (lambda t: _data_folder(t, "part2.csv", "gone.csv"),
                                  "data/part2.csv: a symbolic link that loops or points nowhere"),
    "data-folder-link-to-itself": (lambda t: _data_folder(t, "again", str(t / "data")),
                                   "data/again: a symbolic link to the data folder"),
    "data-folder-link-to-parent": (lambda t: _data_folder(t, "up", ".."),
                                   "data/up: a symbolic link to the data folder"),
    "target-name-300-chars": (lambda t: _csv(t, lambda f: f.rename(columns={"homo": LONG}))[:2] + [
        "--set", f"data.targets=[mu, alpha, {LONG}]"],
                              "task name of 300 bytes ('xxxxxxxxxxxxxxxxxxxx...') is too long"),
    "alias-300-chars": (lambda t: ["--set", f"data.aliases={{mu: {LONG}}}"], "column 'mu': task name of 300 bytes"),
    "probe-all-the-same": (lambda t: _probes(t, b"CCO\n" * 50),
                           "probe file's 50 inputs hold 1 distinct one(s) ('CCO')"),
    "probe-one-molecule-spelt-three-ways": (lambda t: _probes(t, b"CCO\nOCC\nC(C)O\n[CH3]CO\n"),
                                            "probe file's 4 inputs hold 1 distinct"),
    "probe-two-distinct": (lambda t: _probes(t, b"CCO\nCCN\n" * 20), "hold 2 distinct one(s)"),
    "logme-too-few-probe-labels": (lambda t: _csv(t, lambda f: _set(f, "homo", np.nan, slice(12, None))),
                                   "metric 'logme': task 'homo' has"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_trained(tmp_path: Path, name: str) -> None:
    make, message = CASES[name]
    workdir = tmp_path / "work"
    extra = make(tmp_path)
    config = str(TINY_CONFIG)
    if extra[:1] == ["CONFIG"]:
        config, extra = extra[1], []
    result = CliRunner().invoke(app, ["run", config, "--set", f"workdir={workdir}", *extra])
    # warnings are lines of their own (a 120-row table cannot meet tiny.yaml's train.n_train: 300)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    artifacts = workdir / "artifacts"
    if artifacts.is_dir():
        assert not {"models", "embeddings", "similarity"} & {p.name for p in artifacts.iterdir()}
        assert not [p for p in artifacts.rglob("*") if p.name.startswith(".tmp-")]
    assert not (workdir / "report").exists()


def test_a_full_disk_is_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "artifacts" / "x.npy"
    with pytest.raises(typer.Exit) as stop, user_errors():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    err = capsys.readouterr().err.strip()
    assert stop.value.exit_code == 2 and err == f"error: {target}: No space left on device"


@pytest.mark.parametrize("verb", [["pretrain", "--subset", "mu,nope"],
                                  ["finetune", "--target", "alpha", "--source", "nope"]])
def test_unknown_task_on_the_command_line_is_refused_before_training(tmp_path: Path, verb: list[str]) -> None:
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, [*verb[:1], str(TINY_CONFIG), *verb[1:], "--set", f"workdir={workdir}"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "unknown task(s) ['nope']" in lines[0], result.output
    assert not (workdir / "artifacts" / "models").exists()
