"""Probe sets: the shared inputs every task model embeds.

By default a seeded sample from the test split (outside every training split); otherwise a file:
for molecules, plain text with one SMILES a line or a CSV/Parquet with a ``smiles`` column; for
crystals, a gzip-JSON structure table or a folder of CIF/POSCAR files.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.data.tasks import ID, TaskTable, read_table
from tasksim_ray.errors import TasksimError


def qm9pack_version() -> str:
    try:
        return version("qm9pack")
    except PackageNotFoundError:
        return "missing"


CRYSTAL_SUFFIXES = (".json.gz", ".json", ".cif")
MIN_PROBES = 3


def is_crystal_file(path: Path) -> bool:
    """Crystal probe sets: a gzip-JSON structure table, or a folder of CIF/POSCAR files."""
    return path.is_dir() or path.name.endswith(CRYSTAL_SUFFIXES)


def read_probe_file(path: Path, size: int, seed: int) -> tuple[str, list[str], list[str]]:
    """(input kind, inputs, ids) of a probe file, a seeded sample of ``size`` when it holds more."""
    if not path.exists():
        raise TasksimError(f"{path}: probe file not found")
    if is_crystal_file(path):
        from tasksim_ray.data.crystals import read_structures

        ids, inputs = read_structures(path)
        kind = "crystal"
    else:
        inputs = _read_smiles(path)
        ids = [f"probe_{i:06d}" for i in range(len(inputs))]
        kind = "molecule"
    check_distinct(inputs, kind, path)
    if len(inputs) > size:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(inputs), size=size, replace=False))
        inputs, ids = [inputs[i] for i in keep], [ids[i] for i in keep]
    return kind, inputs, ids


def check_distinct(inputs: list[str], kind: str, path: Path) -> None:
    """Similarity compares how task models embed different inputs: a probe set of one input repeated
    gives every task the same constant embedding (a metric of NaN after all the training)."""
    distinct = len(set(inputs if kind == "crystal" else map(_canonical, inputs)))
    if distinct < MIN_PROBES <= len(inputs):  # fewer inputs than that: require_enough says so
        raise TasksimError(f"{path}: the probe file's {len(inputs)} inputs hold {distinct} distinct one(s) "
                           f"('{inputs[0][:40]}'); at least {MIN_PROBES} different are needed")


def _canonical(smiles: str) -> str:
    """RDKit's canonical SMILES ("OCC" and "CCO" are one molecule); the text itself if it does not parse."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else smiles


def _read_smiles(path: Path) -> list[str]:
    if path.suffix in {".csv", ".parquet"}:
        frame = read_table(path)
        col = next((c for c in frame.columns if c.lower() == "smiles"), None)
        if col is None:
            raise TasksimError(f"{path}: probe table has no 'smiles' column")
        smiles = frame[col].dropna().astype(str).str.strip().tolist()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TasksimError(f"{path}: probe file is not UTF-8 text (byte {exc.start})") from None
        smiles = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not smiles:
        raise TasksimError(f"{path}: probe file has no SMILES")
    return smiles


def holdout_probes(table: TaskTable, test_rows: np.ndarray, size: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of test-split molecules: outside every task's training data."""
    rng = np.random.default_rng(seed + 1)  # independent of the split's stream
    rows = np.sort(rng.choice(test_rows, size=min(size, len(test_rows)), replace=False))
    frame = table.frame.iloc[rows]
    return frame[table.input_column].tolist(), frame[ID].astype(str).tolist()


def require_enough(frame: pd.DataFrame, n_invalid: int) -> None:
    if len(frame) < MIN_PROBES:
        raise TasksimError(f"probe set has {len(frame)} valid molecules after skipping "
                           f"{n_invalid} invalid SMILES; at least {MIN_PROBES} are needed")
