"""Config of the data: which files and columns become tasks, derived binary tasks, label outliers, crystal
graphs and where the train/validation/test rows come from. Source names are checked against
``tasksim_ray.registry.SOURCES``, so a registered loader is valid with no edit here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import registered
from tasksim_ray.registry import SOURCES


class CrystalGraphConfig(_Strict):
    """Crystal graphs: neighbours within ``radius`` (A), at most ``max_neighbors`` per atom, distances
    expanded in Gaussians centred at dmin, dmin + step, ..., radius (CGCNN's 8 A, 12, 0..8 step 0.2)."""

    radius: float = Field(default=8.0, gt=0)
    """Neighbour cutoff radius in Angstrom."""
    max_neighbors: int = Field(default=12, ge=1)
    """At most this many nearest neighbours per atom."""
    dmin: float = Field(default=0.0, ge=0)
    """Centre of the first Gaussian of the distance expansion (Angstrom)."""
    step: float = Field(default=0.2, gt=0)
    """Spacing (and width) of the Gaussians of the distance expansion (Angstrom)."""


class SplitConfig(_Strict):
    """Where a study's (train, val, test) rows come from, one triple per seed: ``random`` (seeded
    ``fractions``), ``published`` (a folder of ``*_seed{seed}*.json`` files, ``{key: [train, val, test]}``
    row positions as the mixture-of-experts study ships them; ``key`` defaults to the task file's
    known split key, else the task name; ``keys`` sets it per task), ``column`` (a column of the data file holding
    ``train``/``val``/``test``), ``file`` (a CSV with ``row,split`` or a JSON ``[train, val, test]``) or ``kfold``
    (sklearn's shuffled ``KFold`` over the file's rows, Matbench's by default: 5 folds, random_state 18012019;
    ``seeds`` are the test folds, and ``val_fraction`` of each training fold validates). ``max_train`` keeps a
    seeded subsample of every training part (laptop runs); ``sample_seed`` seeds it and the kfold validation."""

    kind: Literal["random", "published", "column", "file", "kfold"] = "random"
    """Where the splits come from: seeded `random` fractions, `published` split files, a `column` of the data file,
    a split `file`, or Matbench-style `kfold`."""
    path: str | None = None
    """The split folder (`published`) or file (`file`)."""
    key: str | None = None
    """The key of this task in the published split files (default: the file's known key, else the task name)."""
    keys: dict[str, str] = Field(default_factory=dict)
    """Per task: its key in the published split files, for tasks the files do not know by name."""
    column: str = "split"
    """The data file's column holding `train`/`val`/`test` (kind `column`)."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Split seeds; one (train, val, test) triple each. For `kfold`, the test folds."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train, validation and test fractions of a `random` split (sum to 1)."""
    n_splits: int = Field(default=5, ge=2)
    """Folds of a `kfold` split."""
    random_state: int = 18012019
    """Seed of sklearn's shuffled `KFold` (Matbench v0.1's by default)."""
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    """The share of each `kfold` training fold held out for validation."""
    max_train: int | None = Field(default=None, ge=2)
    """Keep a seeded subsample of at most this many rows of every training part (null: all)."""
    sample_seed: int = 0
    """Seed of the `max_train` subsample and of the `kfold` validation draw."""

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.kind == "kfold" and not all(0 <= s < self.n_splits for s in self.seeds):
            raise ValueError(f"split.seeds are kfold test folds: each in [0, {self.n_splits}), got {self.seeds}")
        if self.kind in ("published", "file") and not self.path:
            raise ValueError(f"split.path is required when split.kind is '{self.kind}'")
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) < 0:
            raise ValueError("split.fractions must be three fractions >= 0 summing to 1")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"split.seeds has duplicates: {self.seeds}")
        return self


def listed_once(names: list[str] | None) -> list[str] | None:
    """A target listed twice would become two tasks fighting over one column."""
    twice = sorted({n for n in names or [] if (names or []).count(n) > 1})
    if twice:
        raise ValueError(f"target(s) {twice} listed more than once")
    return names


class FileConfig(_Strict):
    """One file of a data folder: which columns are tasks (default: every numeric non-id column),
    short task names and units per column, and whether its pickle may be read (pickle runs code)."""

    targets: list[str] | None = None
    """Columns of this file that are tasks (null: every numeric non-id column)."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """Column -> task name for this file."""
    units: dict[str, str] = Field(default_factory=dict)
    """Column -> units for this file."""
    trust_pickle: bool = False
    """Read this file even if it is a pickle (pickle runs code: only for files you trust)."""

    _targets_once = field_validator("targets")(lambda v: listed_once(v))


class BinaryConfig(_Strict):
    """A 0/1 task derived from a loaded task by a threshold (a stand-in for a classification target, e.g. "is a
    metal" from a band gap): 1 where the label is below ``below`` (or above ``above``), 0 elsewhere, missing where
    the label is missing. Exactly one of the two is set."""

    task: str
    """The loaded task (its name after aliases) whose labels are thresholded."""
    below: float | None = None
    """1 where the label is strictly below this value."""
    above: float | None = None
    """1 where the label is strictly above this value."""

    @model_validator(mode="after")
    def _one_threshold(self) -> BinaryConfig:
        if (self.below is None) == (self.above is None):
            raise ValueError("a binary task sets exactly one of 'below' and 'above'")
        return self


class DataConfig(_Strict):
    """Where the tasks come from: one task per (file, target column). ``targets`` order is the
    priority order of the target filter; ``aliases``/``units`` map a column to its task name/units
    (for a folder, per file in ``files``, keyed by file stem). Known datasets add units and short
    aliases; they never decide which columns run.

    Molecules: ``qm9pack``, ``moleculenet`` or any ``table`` with a SMILES column. Crystals:
    ``crystals`` (gzip-JSON structure tables, one file or a folder of them), ``structure_table``
    (a table with a structure column), ``id_prop`` (a folder of CIF/POSCAR files with id_prop.csv)
    or ``matbench`` (a Matbench dataset file). Pickle tables are read only when named in
    ``trust_pickle`` (file names) or ``files.<stem>.trust_pickle``."""

    source: str = "qm9pack"
    """The loader: a name in `tasksim_ray.registry.SOURCES`."""
    path: str | None = None
    """A data file or folder (not needed for `qm9pack`)."""
    smiles_column: str = "smiles"
    """The SMILES column of a molecule table."""
    structure_column: str = "structure"
    """The structure column of a crystal table."""
    graph: CrystalGraphConfig = CrystalGraphConfig()
    """How crystal structures become graphs."""
    id_column: str | None = None
    """The row id column (null: `mol_id` when present, else the row number)."""
    targets: list[str] | None = None
    """Target columns that become tasks, in priority order for the correlation filter (null: every numeric non-id
    column)."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """Column -> task name, for every file."""
    units: dict[str, str] = Field(default_factory=dict)
    """Column -> units, for every file."""
    files: dict[str, FileConfig] = Field(default_factory=dict)
    """Per file of a folder (keyed by file stem): its own targets, aliases, units and pickle trust."""
    trust_pickle: list[str] = Field(default_factory=list)
    """File names (or stems) whose pickles may be read."""
    split: SplitConfig = SplitConfig()
    """Where train/validation/test rows come from."""
    max_molecules: int | None = Field(default=None, gt=0)
    """Keep a seeded sample of at most this many rows of the table (null: all)."""
    outliers: Literal["keep", "drop", "error"] = "keep"
    """Labels far outside the rest of their task (robust z above `outlier_z`, `tasksim_ray.data.outliers`): one
    warning line per task either way; `keep` them, `drop` them (the row leaves that task) or refuse the table
    (`error`)."""
    outlier_z: float = Field(default=20.0, gt=0)
    """The robust z, |y - median| / (1.4826 MAD), above which a label is an outlier."""
    binary: dict[str, BinaryConfig] = Field(default_factory=dict)
    """New task name -> a 0/1 task thresholded from a loaded task (`tasksim_ray.data.binary`); the loaded task stays."""

    _source_registered = field_validator("source")(lambda v: registered(SOURCES, v))
    _targets_once = field_validator("targets")(lambda v: listed_once(v))

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "qm9pack" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self
