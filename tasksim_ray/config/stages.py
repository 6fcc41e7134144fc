"""Config sections of the similarity pipeline: data, preprocessing, model, training, probes,
embedding, similarity metrics, selection and the Ray runtime. Backbone, metric and source names
are checked against ``tasksim_ray.registry``, so a registered name is valid with no edit here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.registry import BACKBONES, METRICS, SOURCES, Registry


def registered(registry: Registry[Any], name: str) -> str:
    """``name`` if ``registry`` knows it; else the one-line error listing the registered names."""
    if name not in registry:
        raise ValueError(registry.unknown(name))
    return name


class CrystalGraphConfig(_Strict):
    """Crystal graphs: neighbours within ``radius`` (A), at most ``max_neighbors`` per atom, distances
    expanded in Gaussians centred at dmin, dmin + step, ..., radius (CGCNN's 8 A, 12, 0..8 step 0.2)."""

    radius: float = Field(default=8.0, gt=0)
    max_neighbors: int = Field(default=12, ge=1)
    dmin: float = Field(default=0.0, ge=0)
    step: float = Field(default=0.2, gt=0)


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
    path: str | None = None
    key: str | None = None
    keys: dict[str, str] = Field(default_factory=dict)  # per task: its key in the published files
    column: str = "split"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    n_splits: int = Field(default=5, ge=2)
    random_state: int = 18012019  # Matbench v0.1's KFold seed
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    max_train: int | None = Field(default=None, ge=2)
    sample_seed: int = 0

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
    aliases: dict[str, str] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    trust_pickle: bool = False

    _targets_once = field_validator("targets")(lambda v: listed_once(v))


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

    source: str = "qm9pack"  # a name in tasksim_ray.registry.SOURCES
    path: str | None = None
    smiles_column: str = "smiles"
    structure_column: str = "structure"
    graph: CrystalGraphConfig = CrystalGraphConfig()
    id_column: str | None = None
    targets: list[str] | None = None
    aliases: dict[str, str] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileConfig] = Field(default_factory=dict)
    trust_pickle: list[str] = Field(default_factory=list)
    split: SplitConfig = SplitConfig()
    max_molecules: int | None = Field(default=None, gt=0)

    _source_registered = field_validator("source")(lambda v: registered(SOURCES, v))
    _targets_once = field_validator("targets")(lambda v: listed_once(v))

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "qm9pack" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class PreprocessConfig(_Strict):
    corr_threshold: float = Field(default=0.8, gt=0, le=1)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    n_folds: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> PreprocessConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError("preprocess.split must be three positive fractions summing to 1")
        return self


class ModelConfig(_Strict):
    """The backbone. The D-MPNN (molecules) is set by the typed keys below; every other registered
    backbone (``cgcnn``, ``chgnet``, ``mace``, ``alignn``, or one registered from user code) takes its
    constructor arguments from ``params``."""

    backbone: str = "dmpnn"  # a name in tasksim_ray.registry.BACKBONES
    hidden_dim: int = Field(default=300, gt=0)
    depth: int = Field(default=3, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    aggregation: Literal["norm", "mean", "sum"] = "norm"
    ffn_hidden_dim: int = Field(default=300, gt=0)
    ffn_layers: int = Field(default=2, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)

    _backbone_registered = field_validator("backbone")(lambda v: registered(BACKBONES, v))

    @model_validator(mode="after")
    def _params_for_crystal_backbones(self) -> ModelConfig:
        if self.backbone == "dmpnn" and self.params:
            raise ValueError("model.params is for the other backbones; the D-MPNN uses the typed model keys")
        return self

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments of the backbone."""
        if self.backbone != "dmpnn":
            return dict(self.params)
        return self.model_dump(exclude={"backbone", "params"})


class TrainConfig(_Strict):
    """Per-task pretraining. ``n_train``/``n_val`` cap the molecules used (None: the whole split)."""

    n_train: int | None = Field(default=None, gt=0)
    n_val: int | None = Field(default=None, gt=0)
    fold: int = Field(default=0, ge=0)
    max_epochs: int = Field(default=50, ge=1)
    patience: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)


class ProbeConfig(_Strict):
    """``holdout`` samples QM9-style molecules outside every training split; ``file`` reads SMILES."""

    source: Literal["holdout", "file"] = "holdout"
    path: str | None = None
    size: int = Field(default=500, ge=3)

    @model_validator(mode="after")
    def _path_needed(self) -> ProbeConfig:
        if self.source == "file" and not self.path:
            raise ValueError("probe.path is required when probe.source is 'file'")
        return self


class EmbedConfig(_Strict):
    """The embedding service's model hosts (``embedding/hosts.py``): ``hosts`` actors (None: one per
    ``threads`` CPUs, or one per ``gpu_fraction`` of each GPU when GPUs are used), each holding task
    models up to ``host_memory_gb``, asking Ray for ``num_cpus`` and running ``threads`` torch
    threads on CPU (a process costs ~5 s of imports; two threads in one do the work of two
    one-thread processes here, so fewer, wider hosts start faster). ``use_gpu``: ``auto`` uses GPUs
    when the cluster has some now; ``always`` also when it has none yet, for clusters whose GPU workers
    autoscale from zero (the pending GPU request is what scales them up); ``never`` keeps
    embedding on CPUs."""

    batch_size: int = Field(default=128, gt=0)
    hosts: int | None = Field(default=None, ge=1)
    host_memory_gb: float = Field(default=2.0, gt=0)
    num_cpus: float = Field(default=0.5, gt=0)
    threads: int = Field(default=2, ge=1)
    gpu_fraction: float = Field(default=0.25, gt=0, le=1)
    use_gpu: Literal["auto", "always", "never"] = "auto"
    layer: str = "graph"  # graph: the backbone's default graph-level features; node; or one of its LAYERS


class BootstrapConfig(_Strict):
    """Percentile CIs of RSA over probe resamples; ``n_boot: 0`` turns them off."""

    n_boot: int = Field(default=200, ge=0)
    level: float = Field(default=0.95, gt=0, lt=1)
    max_probes: int = Field(default=1000, ge=3)


class CSIConfig(_Strict):
    """Dataset similarity: every task's own training inputs embedded by one shared model."""

    model: str | None = None  # a task whose model embeds all datasets (default: the first), or a FOUNDATION_MODELS name
    per_task: int = Field(default=500, ge=2)
    level: Literal["graph", "node"] = "graph"
    per_structure: int = Field(default=8, ge=1)  # node level: atoms drawn per molecule at most


class SimilarityConfig(_Strict):
    metrics: list[str] = Field(default_factory=lambda: ["rsa"], min_length=1)  # names in registry.METRICS
    comparison: Literal["spearman", "pearson", "kendall"] = "spearman"
    bootstrap: BootstrapConfig = BootstrapConfig()
    csi: CSIConfig = CSIConfig()
    cmd_order: int = Field(default=5, ge=1)
    memory_budget_gb: float = Field(default=8.0, gt=0)

    @field_validator("metrics")
    @classmethod
    def _metrics_registered(cls, names: list[str]) -> list[str]:
        return [registered(METRICS, n) for n in names]


class SelectionConfig(_Strict):
    """The subset is chosen on a metric of kind ``similarity`` (a threshold in [-1, 1], higher is closer)."""

    metric: str = "rsa"
    threshold: float = Field(default=0.5, ge=-1, le=1)

    @field_validator("metric")
    @classmethod
    def _similarity_metric(cls, name: str) -> str:
        if METRICS.get(registered(METRICS, name)).kind != "similarity":
            similar = [m for m in METRICS.names() if METRICS.get(m).kind == "similarity"]
            raise ValueError(f"'{name}' is not a similarity (higher: closer); selection metrics: {', '.join(similar)}")
        return name



class PublishedConfig(_Strict):
    """Published per-task checkpoints (a folder of CGCNN ``*.pth.tar``) used as the task models:
    no training; the probe set (a file) goes through them and probe-based metrics compare them."""

    path: str | None = None
    tasks: list[str] | None = None  # a subset of the checkpoints' task names (default: all)


class RayConfig(_Strict):
    """Resources of the embedded local Ray (``num_cpus``, ``num_gpus``; ignored when connecting to a
    cluster, RAY_ADDRESS). ``pending_timeout_s``: how long a request no node of the cluster can run
    (a GPU on a CPU-only cluster, a node type the autoscaler cannot deliver, a node that died) may
    wait for one to appear before the run fails naming the resource; every request is also checked
    against the nodes and the autoscaler's node types before the first Ray task."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    num_gpus: int | None = Field(default=None, ge=0)
    include_dashboard: bool = False
    pending_timeout_s: float = Field(default=600.0, gt=0)


class ServeConfig(_Strict):
    """``tasksim serve``'s limits on one POST /embed: at most ``max_inputs`` inputs, each of at most
    ``max_atoms`` atoms (a SMILES's atoms, a structure's sites); a request past either is refused
    with HTTP 413 before anything is featurised, so one request cannot hold a replica for minutes."""

    max_inputs: int = Field(default=1000, ge=1)
    max_atoms: int = Field(default=1000, ge=1)


class StorageConfig(_Strict):
    """Where artifacts are shared: ``<workdir>`` is mirrored at ``uri`` (a path, ``s3://`` or
    ``gs://``; None: local only). ``endpoint_override``/``region`` are for S3 and default to the
    AWS_ENDPOINT_URL(_S3)/AWS_REGION variables; credentials only ever come from the environment."""

    uri: str | None = None
    endpoint_override: str | None = None
    region: str | None = None


