"""Probe sets: the shared molecules every task model embeds.

By default a seeded sample of molecules from the test split (outside every training split);
otherwise any SMILES file: plain text with one SMILES a line, or a CSV/Parquet with a ``smiles``
column.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize import FeaturizeReport
from tasksim_ray.tasks import ID, SMILES, TaskTable, read_table


def qm9pack_version() -> str:
    try:
        return version("qm9pack")
    except PackageNotFoundError:
        return "missing"


def read_probe_file(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise TasksimError(f"{path}: probe file not found")
    if path.suffix in {".csv", ".parquet"}:
        frame = read_table(path)
        col = next((c for c in frame.columns if c.lower() == "smiles"), None)
        if col is None:
            raise TasksimError(f"{path}: probe table has no 'smiles' column")
        smiles = frame[col].dropna().astype(str).str.strip().tolist()
    else:
        smiles = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not smiles:
        raise TasksimError(f"{path}: probe file has no SMILES")
    return smiles, [f"probe_{i:06d}" for i in range(len(smiles))]


def holdout_probes(table: TaskTable, test_rows: np.ndarray, size: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of test-split molecules: outside every task's training data."""
    rng = np.random.default_rng(seed + 1)  # independent of the split's stream
    rows = np.sort(rng.choice(test_rows, size=min(size, len(test_rows)), replace=False))
    frame = table.frame.iloc[rows]
    return frame[SMILES].tolist(), frame[ID].astype(str).tolist()


def require_enough(frame: pd.DataFrame, report: FeaturizeReport) -> None:
    if len(frame) < 3:
        raise TasksimError(f"probe set has {len(frame)} valid molecules after skipping "
                           f"{len(report.invalid_rows)} invalid SMILES; at least 3 are needed")
