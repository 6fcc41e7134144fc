"""Crystal datasets: structures, targets and published splits from the formats materials ML uses.

* gzip or plain JSON tables ``{"columns", "index"?, "data"}``, rows as dicts (the mixture-of-experts
  task files, rees-c/MoE) or as lists (pandas ``orient="split"``, which is matminer's and
  Matbench's ``.json.gz`` format); structures as ``Structure.as_dict()``. matminer itself cannot be
  installed beside our pins (0.10.1 needs pandas < 3, 0.8.0 imports the removed
  ``pkg_resources``), so the format is read here with pymatgen;
* the MoE study's published 70/15/15 splits, five seeds, one JSON file per seed;
* tables (CSV, Parquet, pickle, JSON) with a structure column of Structures, dicts, JSON or CIF text;
* a CGCNN/ALIGNN folder: ``id_prop.csv`` (``id,target`` rows, no header) plus one structure file
  per id (``<id>.cif``, ``<id>.vasp``, ``<id>`` or ``<id>/POSCAR``).

Every error is a :class:`TasksimError` naming the file and the row or field at fault.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from tasksim_ray.errors import TasksimError

Split = tuple[np.ndarray, np.ndarray, np.ndarray]
SPLIT_FILE = "task_partition_indices_seed{seed}_correctedExptEf.json"
ID_COLUMNS = ("mpid", "material_id", "jid", "id")


@dataclass(frozen=True)
class KnownFile:
    """Targets (the first is the one the MoE study trained on), their units, and the split key."""

    targets: tuple[str, ...]
    units: dict[str, str]
    split_key: str | None = None


# file stem -> targets, units, split key (shared data README; rees-c/MoE get_small_datasets_info_dict)
KNOWN_FILES: dict[str, KnownFile] = {
    "matbench_log_phonons": KnownFile(("log(last phdos peak)", "last phdos peak"),
                                      {"last phdos peak": "cm^-1", "log(last phdos peak)": "ln(cm^-1)"}, "mp_phonons"),
    "expt_formation_enthalpy_combined_RC": KnownFile(("e_form expt",), {"e_form expt": "eV/atom"}, "expt_eform"),
    "log_piezoelectric_tensor_RC": KnownFile(("log(1 + eij_max)", "eij_max"),
                                             {"eij_max": "C/m^2", "log(1 + eij_max)": "ln(1 + C/m^2)"},
                                             "piezoelectric_tensor"),
    "jarvis_dft_2d_exfol_energy": KnownFile(("exfoliation_en",), {"exfoliation_en": "meV/atom"},
                                            "jarvis_2d_exfoliation"),
    "jarvis_dft_2d_eform_2022-04-11": KnownFile(("e_form",), {"e_form": "eV/atom"}, "jarvis_2d_eform"),
    "jarvis_dft_2d_gap_opt_2022-04-11": KnownFile(("gap opt",), {"gap opt": "eV"}, "jarvis_2d_gap_opt"),
    "jarvis_dft_2d_dielectric_opt_2022-04-11": KnownFile(("dielectric opt",), {"dielectric opt": ""},
                                                         "jarvis_2d_dielectric_opt"),
    "jarvis_dft_2d_dielectric_tbmbj_2022-04-11": KnownFile(("dielectric tbmbj",), {"dielectric tbmbj": ""},
                                                           "jarvis_2d_dielectric_tbmbj"),
    "elastic_tensor_2015_elastic_anisotropy": KnownFile(("elastic_anisotropy",), {"elastic_anisotropy": ""},
                                                        "mp_elastic_anisotropy"),
    "log_phonon_dielectric_mp_eps_electronic": KnownFile(("log_eps_electronic", "eps_electronic"),
                                                         {"eps_electronic": "", "log_eps_electronic": ""},
                                                         "mp_eps_electronic"),
    "dielectric_constant_poly_electronic": KnownFile(("poly_electronic",), {"poly_electronic": ""},
                                                     "mp_poly_electronic"),
    "dielectric_constant_poly_total": KnownFile(("poly_total",), {"poly_total": ""}, "mp_poly_total"),
    # matminer / Matbench files (no published MoE split)
    "matbench_jdft2d": KnownFile(("exfoliation_en",), {"exfoliation_en": "meV/atom"}),
    "matbench_phonons": KnownFile(("last phdos peak",), {"last phdos peak": "cm^-1"}),
    "matbench_dielectric": KnownFile(("n",), {"n": ""}),
    "matbench_log_gvrh": KnownFile(("log10(G_VRH)",), {"log10(G_VRH)": "log10(GPa)"}),
    "matbench_log_kvrh": KnownFile(("log10(K_VRH)",), {"log10(K_VRH)": "log10(GPa)"}),
    "matbench_mp_e_form": KnownFile(("e_form",), {"e_form": "eV/atom"}),
    "matbench_mp_gap": KnownFile(("gap pbe",), {"gap pbe": "eV"}),
    "matbench_perovskites": KnownFile(("e_form",), {"e_form": "eV/unit cell"}),
    "jarvis_dft_2d": KnownFile(("exfoliation_en", "e_form", "epsilon_x opt", "epsilon_y opt", "epsilon_z opt"),
                               {"exfoliation_en": "meV/atom", "e_form": "eV/atom", "epsilon_x opt": "",
                                "epsilon_y opt": "", "epsilon_z opt": ""}),
    "phonon_dielectric_mp": KnownFile(("eps_electronic", "eps_total", "last phdos peak"),
                                      {"eps_electronic": "", "eps_total": "", "last phdos peak": "cm^-1"}),
    "piezoelectric_tensor": KnownFile(("eij_max",), {"eij_max": "C/m^2"}),
}


@dataclass
class CrystalDataset:
    """Rows are structures; ``targets`` has one float column per target, NaN where a label is missing.
    ``splits[seed]`` is (train, val, test) row positions."""

    name: str
    ids: list[str]
    structures: list[Structure]
    targets: pd.DataFrame
    units: dict[str, str]
    splits: list[Split] | None = None

    def __len__(self) -> int:
        return len(self.structures)

    def labels(self, target: str) -> np.ndarray:
        if target not in self.targets.columns:
            raise TasksimError(f"{self.name}: no target '{target}'; targets: {list(self.targets.columns)}")
        return self.targets[target].to_numpy(dtype=np.float64)


def file_stem(path: Path) -> str:
    name = path.name
    for ext in (".json.gz", ".gz", ".json", ".csv", ".parquet", ".pkl", ".pickle"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _require(path: Path) -> None:
    if not path.exists():
        raise TasksimError(f"{path}: file not found")


def parse_structure(value: Any, where: str) -> Structure:
    """A Structure from a Structure, an ``as_dict()`` dict, its JSON text, or CIF/POSCAR text."""
    if isinstance(value, Structure):
        return value
    try:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = json.loads(value)
        if isinstance(value, dict):
            return Structure.from_dict(value)
        if isinstance(value, str):
            fmt = "cif" if ("_cell_length_a" in value or value.lstrip().startswith("data_")) else "poscar"
            return Structure.from_str(value, fmt=fmt)
    except Exception as exc:  # pymatgen raises many types for bad input
        raise TasksimError(f"{where}: unparseable structure ({type(exc).__name__}: {exc})") from exc
    raise TasksimError(f"{where}: unparseable structure (got {type(value).__name__})")


def _to_float(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    out = {}
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TasksimError(f"{where}: row {row}, column '{col}': not a number ({frame[col].iloc[row]!r})")
        out[col] = values.to_numpy(dtype=np.float64)
    return pd.DataFrame(out, index=range(len(frame)))


def _from_frame(frame: pd.DataFrame, path: Path, structure_column: str, targets: Sequence[str] | None,
                id_column: str | None, units: dict[str, str] | None) -> CrystalDataset:
    """Shared tail of the table loaders: pick columns, parse structures, coerce targets."""
    stem = file_stem(path)
    known = KNOWN_FILES.get(stem)
    if structure_column not in frame.columns:
        raise TasksimError(f"{path}: no structure column '{structure_column}'; columns: {list(frame.columns)}")
    id_column = id_column or next((c for c in ID_COLUMNS if c in frame.columns), None)
    if targets is None:
        targets = [t for t in known.targets if t in frame.columns] if known else [
            c for c in frame.columns if c not in (structure_column, id_column)
            and pd.api.types.is_numeric_dtype(frame[c])]
    missing = [t for t in targets if t not in frame.columns]
    if missing or id_column is not None and id_column not in frame.columns:
        raise TasksimError(f"{path}: missing column(s) {missing or [id_column]}; columns: {list(frame.columns)}")
    structures = [parse_structure(v, f"{path}: row {i}") for i, v in enumerate(frame[structure_column])]
    ids = [str(v) for v in (frame[id_column] if id_column else frame.index)]
    units = {t: (units or {}).get(t, known.units.get(t, "") if known else "") for t in targets}
    return CrystalDataset(stem, ids, structures, _to_float(frame[list(targets)], str(path)), units)


def load_json_table(path: str | Path, targets: Sequence[str] | None = None, structure_column: str = "structure",
                    id_column: str | None = None, units: dict[str, str] | None = None) -> CrystalDataset:
    """A ``{"columns", "index"?, "data"}`` JSON (gzip or plain): the MoE task files, matminer dumps
    and Matbench datasets. Targets and units default to :data:`KNOWN_FILES` for known file names,
    else every numeric column; ids come from ``id_column``, a known id column, or the index."""
    path = Path(path)
    _require(path)
    try:
        with (gzip.open(path, "rt") if path.name.endswith(".gz") else path.open()) as fh:
            doc = json.load(fh)
        columns, data = doc["columns"], doc["data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TasksimError(f"{path}: not a JSON table with 'columns' and 'data' ({type(exc).__name__}: {exc})") from exc
    rows = [r if isinstance(r, dict) else dict(zip(columns, r)) for r in data]
    frame = pd.DataFrame(rows)
    if "index" in doc:
        if len(doc["index"]) != len(rows):
            raise TasksimError(f"{path}: 'index' has {len(doc['index'])} entries for {len(rows)} rows")
        frame.index = [str(i) for i in doc["index"]]
    return _from_frame(frame, path, structure_column, targets, id_column, units)


def load_published_splits(splits_dir: str | Path, split_key: str, n_rows: int,
                          seeds: Sequence[int] = range(5)) -> list[Split]:
    """The MoE study's (train, val, test) row positions for ``split_key``, one triple per seed."""
    splits: list[Split] = []
    for seed in seeds:
        path = Path(splits_dir) / SPLIT_FILE.format(seed=seed)
        _require(path)
        doc = json.loads(path.read_text())
        if split_key not in doc:
            raise TasksimError(f"{path}: no split key '{split_key}'; keys: {sorted(doc)}")
        parts = tuple(np.asarray(p, dtype=np.int64) for p in doc[split_key])
        if len(parts) != 3:
            raise TasksimError(f"{path}: '{split_key}' has {len(parts)} parts, expected train/val/test")
        for name, idx in zip(("train", "val", "test"), parts):
            if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
                raise TasksimError(f"{path}: '{split_key}' {name} index {int(idx.max())} out of range "
                                   f"for {n_rows} rows")
        splits.append(parts)  # type: ignore[arg-type]
    return splits


def load_moe_task(path: str | Path, splits_dir: str | Path | None = None,
                  seeds: Sequence[int] = range(5)) -> CrystalDataset:
    """One MoE task file with its published splits (when ``splits_dir`` is given)."""
    path = Path(path)
    known = KNOWN_FILES.get(file_stem(path))
    if known is None or known.split_key is None:
        moe = sorted(k for k, v in KNOWN_FILES.items() if v.split_key)
        raise TasksimError(f"{path}: not a known MoE task file; known: {moe}")
    ds = load_json_table(path)
    if splits_dir is not None:
        ds.splits = load_published_splits(splits_dir, known.split_key, len(ds), seeds)
    return ds


def load_table(path: str | Path, targets: Sequence[str] | None = None, structure_column: str = "structure",
               id_column: str | None = None, units: dict[str, str] | None = None) -> CrystalDataset:
    """A matminer-style table (.csv, .parquet, .pkl/.pickle, .json/.json.gz) with a structure column.
    Pickle runs code from the file: load only pickles you trust."""
    path = Path(path)
    _require(path)
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        return load_json_table(path, targets, structure_column, id_column, units)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pkl": pd.read_pickle, ".pickle": pd.read_pickle}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise TasksimError(f"{path}: unknown table format; use one of {sorted(readers)} or .json(.gz)")
    try:
        frame = reader(path)
    except Exception as exc:  # readers raise many types for bad files
        raise TasksimError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    return _from_frame(frame.reset_index(drop=True), path, structure_column, targets, id_column, units)


def _structure_file(folder: Path, cid: str) -> Path | None:
    for candidate in (folder / f"{cid}.cif", folder / f"{cid}.vasp", folder / cid / "POSCAR", folder / cid,
                      folder / f"POSCAR_{cid}"):
        if candidate.is_file():
            return candidate
    return None


def load_id_prop_folder(folder: str | Path, target: str = "target", units: str = "") -> CrystalDataset:
    """A CGCNN/ALIGNN folder: ``id_prop.csv`` rows ``id,value`` (no header; empty value = missing)
    and one structure file per id."""
    folder = Path(folder)
    id_prop = folder / "id_prop.csv"
    _require(id_prop)
    ids, values, structures = [], [], []
    for n, line in enumerate(id_prop.read_text().splitlines()):
        if not line.strip():
            continue
        cid, _, value = (part.strip() for part in line.partition(","))
        where = f"{id_prop}: row {n} (id '{cid}')"
        try:
            values.append(float(value) if value else np.nan)
        except ValueError:
            raise TasksimError(f"{where}: target {value!r} is not a number") from None
        file = _structure_file(folder, cid)
        if file is None:
            raise TasksimError(f"{where}: no structure file {cid}.cif, {cid}.vasp, {cid}/POSCAR or {cid}")
        structures.append(parse_structure(file.read_text(), f"{where}, file {file.name}"))
        ids.append(cid)
    targets = pd.DataFrame({target: np.asarray(values, dtype=np.float64)})
    return CrystalDataset(folder.name, ids, structures, targets, {target: units})
