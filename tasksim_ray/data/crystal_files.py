"""Crystal datasets: structures and targets from the formats materials ML uses.

* gzip or plain JSON tables ``{"columns", "index"?, "data"}``, rows as dicts (the mixture-of-experts
  task files, rees-c/MoE) or as lists (pandas ``orient="split"``, which is matminer's and
  Matbench's ``.json.gz`` format); structures as ``Structure.as_dict()``. matminer itself cannot be
  installed beside our pins (0.10.1 needs pandas < 3, 0.8.0 imports the removed
  ``pkg_resources``), so the format is read here with pymatgen;
* tables (CSV, Parquet, pickle, JSON) with a structure column of Structures, dicts, JSON or CIF text;
* a CGCNN/ALIGNN folder: ``id_prop.csv`` (``id,target`` rows, no header) plus one structure file
  per id (``<id>.cif``, ``<id>.vasp``, ``<id>`` or ``<id>/POSCAR``).

Any file yields every numeric non-id column as a target unless the caller names them; a known
file name (:data:`KNOWN_FILES`) only adds units and short aliases. Published splits live in
:mod:`tasksim_ray.data.splits`. Every error is a :class:`TasksimError` naming the file and the row
or field at fault.
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

from tasksim_ray.data.tasks import check_header, numeric_columns, read_csv, read_parquet
from tasksim_ray.errors import TasksimError

ID_COLUMNS = ("mpid", "material_id", "jid", "id")
PICKLE_SUFFIXES = (".pkl", ".pickle")


@dataclass(frozen=True)
class KnownFile:
    """What a known dataset adds to its columns: units, short task names and the MoE split key.
    It never decides which columns become tasks."""

    units: dict[str, str]
    aliases: dict[str, str]
    split_key: str | None = None


def _moe(split_key: str, units: dict[str, str], log: str | None = None) -> KnownFile:
    """A MoE task file: its raw column is aliased by the split key, its log column (if any) by
    ``log_<split key>`` (the study trained on the log column where there is one)."""
    raw = next(c for c in units if c != log)
    aliases = {raw: split_key} | ({log: "log_" + split_key} if log else {})
    return KnownFile(units, aliases, split_key)


# file stem -> units, aliases, split key (shared data README; rees-c/MoE get_small_datasets_info_dict)
KNOWN_FILES: dict[str, KnownFile] = {
    "matbench_log_phonons": _moe("mp_phonons", {"last phdos peak": "cm^-1", "log(last phdos peak)": "ln(cm^-1)"},
                                 "log(last phdos peak)"),
    "expt_formation_enthalpy_combined_RC": _moe("expt_eform", {"e_form expt": "eV/atom"}),
    "log_piezoelectric_tensor_RC": _moe("piezoelectric_tensor", {"eij_max": "C/m^2",
                                                                 "log(1 + eij_max)": "ln(1 + C/m^2)"},
                                        "log(1 + eij_max)"),
    "jarvis_dft_2d_exfol_energy": _moe("jarvis_2d_exfoliation", {"exfoliation_en": "meV/atom"}),
    "jarvis_dft_2d_eform_2022-04-11": _moe("jarvis_2d_eform", {"e_form": "eV/atom"}),
    "jarvis_dft_2d_gap_opt_2022-04-11": _moe("jarvis_2d_gap_opt", {"gap opt": "eV"}),
    "jarvis_dft_2d_dielectric_opt_2022-04-11": _moe("jarvis_2d_dielectric_opt", {"dielectric opt": ""}),
    "jarvis_dft_2d_dielectric_tbmbj_2022-04-11": _moe("jarvis_2d_dielectric_tbmbj", {"dielectric tbmbj": ""}),
    "elastic_tensor_2015_elastic_anisotropy": _moe("mp_elastic_anisotropy", {"elastic_anisotropy": ""}),
    "log_phonon_dielectric_mp_eps_electronic": _moe("mp_eps_electronic", {"eps_electronic": "",
                                                                          "log_eps_electronic": ""},
                                                    "log_eps_electronic"),
    "dielectric_constant_poly_electronic": _moe("mp_poly_electronic", {"poly_electronic": ""}),
    "dielectric_constant_poly_total": _moe("mp_poly_total", {"poly_total": ""}),
    # matminer / Matbench files (no published MoE split)
    "matbench_jdft2d": KnownFile({"exfoliation_en": "meV/atom"}, {"exfoliation_en": "jdft2d"}),
    "matbench_phonons": KnownFile({"last phdos peak": "cm^-1"}, {"last phdos peak": "phonons"}),
    "matbench_dielectric": KnownFile({"n": ""}, {"n": "dielectric"}),
    "matbench_log_gvrh": KnownFile({"log10(G_VRH)": "log10(GPa)"}, {"log10(G_VRH)": "log_gvrh"}),
    "matbench_log_kvrh": KnownFile({"log10(K_VRH)": "log10(GPa)"}, {"log10(K_VRH)": "log_kvrh"}),
    "matbench_mp_e_form": KnownFile({"e_form": "eV/atom"}, {"e_form": "mp_e_form"}),
    "matbench_mp_gap": KnownFile({"gap pbe": "eV"}, {"gap pbe": "mp_gap"}),
    "matbench_perovskites": KnownFile({"e_form": "eV/unit cell"}, {"e_form": "perovskites"}),
    "jarvis_dft_2d": KnownFile({"exfoliation_en": "meV/atom", "e_form": "eV/atom", "gap opt": "eV",
                                "gap tbmbj": "eV"}, {}),
    "phonon_dielectric_mp": KnownFile({"last phdos peak": "cm^-1"}, {}),
    "piezoelectric_tensor": KnownFile({"eij_max": "C/m^2"}, {}),
}


@dataclass
class CrystalDataset:
    """Rows are structures; ``targets`` has one float column per target, NaN where a label is missing."""

    name: str
    ids: list[str]
    structures: list[Structure]
    targets: pd.DataFrame
    units: dict[str, str]

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


MIN_VOLUME = 1e-3  # cubic angstrom: far below any real cell (H2 in a box is tens)


def parse_structure(value: Any, where: str) -> Structure:
    """A Structure from a Structure, an ``as_dict()`` dict, its JSON text, or CIF/POSCAR text; its
    lattice must enclose a volume (a flat cell has no periodic neighbours: a division by zero later)."""
    return _with_volume(_parse(value, where), where)


def _parse(value: Any, where: str) -> Structure:
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


def _with_volume(structure: Structure, where: str) -> Structure:
    volume = float(abs(np.linalg.det(structure.lattice.matrix)))
    if not np.isfinite(volume) or volume < MIN_VOLUME:
        raise TasksimError(f"{where}: the lattice has volume {volume:.3g} A^3 (its vectors are linearly dependent "
                           "or not finite): not a crystal")
    return structure


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
    """Shared tail of the table loaders: pick columns, parse structures, coerce targets. Targets
    default to every numeric column but the id; units come from ``units``, else a known dataset."""
    stem = file_stem(path)
    known = KNOWN_FILES.get(stem)
    if structure_column not in frame.columns:
        raise TasksimError(f"{path}: no structure column '{structure_column}'; columns: {list(frame.columns)}")
    id_column = id_column or next((c for c in ID_COLUMNS if c in frame.columns), None)
    if targets is None:
        targets = numeric_columns(frame, {structure_column, id_column or ""}, str(path))
    missing = [t for t in targets if t not in frame.columns]
    if missing or id_column is not None and id_column not in frame.columns:
        raise TasksimError(f"{path}: missing column(s) {missing or [id_column]}; columns: {list(frame.columns)}")
    structures = [parse_structure(v, f"{path}: row {i}") for i, v in enumerate(frame[structure_column])]
    ids = [str(v) for v in (frame[id_column] if id_column else frame.index)]
    units = {t: (units or {}).get(t, known.units.get(t, "") if known else "") for t in targets}
    return CrystalDataset(stem, ids, structures, _to_float(frame[list(targets)], str(path)), units)


def _read_json_table(path: Path) -> pd.DataFrame:
    try:
        with (gzip.open(path, "rt") if path.name.endswith(".gz") else path.open()) as fh:
            doc = json.load(fh)
        columns, data = doc["columns"], doc["data"]
    except EOFError:  # a truncated .gz (click would turn it into a bare "Aborted.")
        raise TasksimError(f"{path}: truncated gzip file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TasksimError(f"{path}: not a JSON table with 'columns' and 'data' ({type(exc).__name__}: {exc})") from None
    check_header(columns, path)
    rows = [r if isinstance(r, dict) else dict(zip(columns, r)) for r in data]
    frame = pd.DataFrame(rows, columns=list(columns) if not rows else None)
    if "index" in doc:
        if len(doc["index"]) != len(rows):
            raise TasksimError(f"{path}: 'index' has {len(doc['index'])} entries for {len(rows)} rows")
        frame.index = [str(i) for i in doc["index"]]
    return frame


def read_frame(path: str | Path, trust_pickle: bool = False) -> pd.DataFrame:
    """The raw table of a .csv, .parquet, .json(.gz) or (trusted only: it runs code) pickle file."""
    path = Path(path)
    _require(path)
    if path.name.lower().endswith((".json", ".json.gz")):
        return _read_json_table(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not trust_pickle:
        raise TasksimError(f"{path}: reading a pickle runs code from the file; list it in data.trust_pickle "
                           f"(or data.files.<stem>.trust_pickle: true) if you trust it")
    readers = {".csv": read_csv, ".parquet": read_parquet, ".pkl": pd.read_pickle, ".pickle": pd.read_pickle}
    reader = readers.get(suffix)
    if reader is None:
        raise TasksimError(f"{path}: unknown table format; use one of {sorted(readers)} or .json(.gz)")
    try:
        frame = reader(path).reset_index(drop=True)
    except TasksimError:
        raise
    except Exception as exc:  # readers raise many types for bad files
        raise TasksimError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    check_header(list(frame.columns), path)  # a pickled frame can carry repeated names too
    return frame


def load_json_table(path: str | Path, targets: Sequence[str] | None = None, structure_column: str = "structure",
                    id_column: str | None = None, units: dict[str, str] | None = None) -> CrystalDataset:
    """A ``{"columns", "index"?, "data"}`` JSON (gzip or plain): the MoE task files, matminer dumps
    and Matbench datasets. Targets default to every numeric column; ids come from ``id_column``, a
    known id column, or the index."""
    path = Path(path)
    return _from_frame(read_frame(path), path, structure_column, targets, id_column, units)


def load_table(path: str | Path, targets: Sequence[str] | None = None, structure_column: str = "structure",
               id_column: str | None = None, units: dict[str, str] | None = None,
               trust_pickle: bool = False) -> CrystalDataset:
    """A matminer-style table (.csv, .parquet, .pkl/.pickle, .json/.json.gz) with a structure column.
    A pickle runs code when read, so it is refused unless ``trust_pickle``."""
    path = Path(path)
    return _from_frame(read_frame(path, trust_pickle), path, structure_column, targets, id_column, units)


def _structure_file(folder: Path, cid: str, where: str) -> Path | None:
    """The structure file of id ``cid``, which must name a file inside ``folder``: an id such as
    ``../../secret`` would read (and quote in an error) a file from anywhere."""
    if not cid or cid in (".", "..") or any(c in cid for c in "/\\\0"):
        raise TasksimError(f"{where}: id {cid!r} is not a plain file name")
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
        if "," in value:
            raise TasksimError(f"{where}: {value.count(',') + 2} fields; id_prop.csv rows are 'id,value' "
                               "(one target per folder)")
        try:
            values.append(float(value) if value else np.nan)
        except ValueError:
            raise TasksimError(f"{where}: target {value!r} is not a number") from None
        file = _structure_file(folder, cid, where)
        if file is None:
            raise TasksimError(f"{where}: no structure file {cid}.cif, {cid}.vasp, {cid}/POSCAR or {cid}")
        structures.append(parse_structure(file.read_text(), f"{where}, file {file.name}"))
        ids.append(cid)
    targets = pd.DataFrame({target: np.asarray(values, dtype=np.float64)})
    return CrystalDataset(folder.name, ids, structures, targets, {target: units})
