"""Molecule task loaders: QM9 from qm9pack, MoleculeNet-format CSVs and any table with SMILES."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.config import DataConfig
from tasksim_ray.data.naming import Column, check_files, file_options, name_tasks
from tasksim_ray.data.tasks import (
    ID,
    SMILES,
    SOURCE,
    SOURCE_ROW,
    TaskTable,
    check_unit_suffix,
    numeric_columns,
    read_table,
)
from tasksim_ray.errors import TasksimError

# QM9 as shipped by qm9pack: our name -> (qm9pack column, units). Order = the filter's priority.
QM9_TARGETS: dict[str, tuple[str, str]] = {
    "mu": ("Dipole_debye", "D"),
    "alpha": ("Polarizability_bohr3", "a0^3"),
    "homo": ("HOMO_au", "Ha"),
    "lumo": ("LUMO_au", "Ha"),
    "gap": ("HOMO_LUMO_gap_au", "Ha"),
    "r2": ("R2_bohr2", "a0^2"),
    "zpve": ("ZPVE_au", "Ha"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", "cal/mol/K"),
    "u0": ("InternalEnergy_0K_au", "Ha"),
    "u298": ("InternalEnergy_298K_au", "Ha"),
    "h298": ("Enthalphy_298K_au", "Ha"),
    "g298": ("GibbsFreeEnergy_298K_au", "Ha"),
    "A": ("RotA_GHz", "GHz"),
    "B": ("RotB_GHz", "GHz"),
    "C": ("RotC_GHz", "GHz"),
}
# Units of the MoleculeNet QM9 columns (also used by the MoTSE subsets).
MOLECULENET_UNITS = {name: units for name, (_, units) in QM9_TARGETS.items()} | {
    f"{e}_atom": "kcal/mol" for e in ("u0", "u298", "h298", "g298")
}


def qm9pack_dir() -> Path:
    """Locate qm9pack's data without importing it (its __init__ needs the retired pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise TasksimError("data.source 'qm9pack' needs the qm9pack package: pip install qm9pack")
    return Path(spec.submodule_search_locations[0]) / "data"


def _pick_targets(frame: pd.DataFrame, cfg: DataConfig, default: list[str], where: str) -> list[str]:
    targets = file_options(cfg, Path(where), _stem(where)).targets or default
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise TasksimError(f"{where}: target column(s) {missing} not found; columns: {list(frame.columns)}")
    for t in targets:
        if not pd.api.types.is_numeric_dtype(frame[t]):
            check_unit_suffix(frame[t], t, where)
            raise TasksimError(f"{where}: target column '{t}' is not numeric")
    return targets


def _stem(source: str) -> str:
    return Path(source).name.split(".")[0]


def _finish(frame: pd.DataFrame, ids: pd.Series, smiles: pd.Series, targets: list[str],
            units: dict[str, str], cfg: DataConfig, source: str) -> TaskTable:
    """The table, one task per target column, named and with units per ``data.aliases``/``units``
    (or ``data.files.<stem>``), then the dataset's own units."""
    stem = _stem(source)
    check_files(cfg, [stem], Path(source))
    opts = file_options(cfg, Path(source), stem)
    tasks = name_tasks([Column(source, stem, t, opts.units.get(t, units.get(t, "")), opts.aliases.get(t))
                        for t in targets], "molecule")
    out = pd.DataFrame({ID: ids.astype(str).to_numpy(), SMILES: smiles.astype(str).to_numpy(),
                        SOURCE: source, SOURCE_ROW: np.arange(len(frame))})
    for t, task in zip(targets, tasks):
        out[task.name] = frame[t].to_numpy(dtype=np.float64)
    if cfg.max_molecules is not None and len(out) > cfg.max_molecules:
        out = out.sample(n=cfg.max_molecules, random_state=0).sort_index()
    return TaskTable(out.reset_index(drop=True), tasks)


def load_qm9pack(cfg: DataConfig) -> TaskTable:
    """Full QM9 (130,831 molecules) from the qm9pack package."""
    names = cfg.targets or list(QM9_TARGETS)
    unknown = [n for n in names if n not in QM9_TARGETS]
    if unknown:
        raise TasksimError(f"data.targets: unknown QM9 target(s) {unknown}; known: {list(QM9_TARGETS)}")
    cols = ["Index", "SMILES", *(QM9_TARGETS[n][0] for n in names)]
    d = qm9pack_dir()
    raw = pd.concat([pd.read_csv(d / f"qm9_part{i}.csv", usecols=cols) for i in (1, 2, 3)],
                    ignore_index=True)
    raw = raw.rename(columns={QM9_TARGETS[n][0]: n for n in names})
    ids = "gdb_" + raw["Index"].astype(str)
    return _finish(raw, ids, raw["SMILES"], names, {n: QM9_TARGETS[n][1] for n in names}, cfg, "qm9pack")


def load_table(cfg: DataConfig) -> TaskTable:
    """Any CSV or Parquet file with a SMILES column; targets default to every numeric column."""
    path = Path(cfg.path or "")
    frame = read_table(path)
    if cfg.smiles_column not in frame.columns:
        raise TasksimError(f"{path}: SMILES column '{cfg.smiles_column}' not found; "
                           f"columns: {list(frame.columns)}")
    skip = {cfg.smiles_column, cfg.id_column or ""}
    targets = _pick_targets(frame, cfg, numeric_columns(frame, skip, str(path)), str(path))
    if not targets:
        raise TasksimError(f"{path}: no numeric target columns")
    ids = frame[cfg.id_column] if cfg.id_column else pd.Series(np.arange(len(frame)))
    return _finish(frame, ids, frame[cfg.smiles_column], targets, {}, cfg, str(path))


def load_moleculenet(cfg: DataConfig) -> TaskTable:
    """MoleculeNet-format CSV (``mol_id, smiles, <targets>``), or a folder of them (concatenated)."""
    path = Path(cfg.path or "")
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise TasksimError(f"{path}: no CSV files in folder")
    frame = pd.concat([read_table(f) for f in files], ignore_index=True)
    smiles_col = cfg.smiles_column if cfg.smiles_column in frame.columns else "smiles"
    if smiles_col not in frame.columns:
        raise TasksimError(f"{path}: no 'smiles' column; columns: {list(frame.columns)}")
    id_col = cfg.id_column or ("mol_id" if "mol_id" in frame.columns else None)
    targets = _pick_targets(frame, cfg, numeric_columns(frame, {smiles_col, id_col or ""}, str(path)), str(path))
    ids = frame[id_col] if id_col else pd.Series(np.arange(len(frame)))
    return _finish(frame, ids, frame[smiles_col], targets, MOLECULENET_UNITS, cfg, str(path))
