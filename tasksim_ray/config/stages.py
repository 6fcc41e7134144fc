"""Config sections of the similarity pipeline after the data (``config.data``): preprocessing, model,
training, probes, embedding, similarity metrics, selection and the Ray runtime. Backbone and metric names
are checked against ``tasksim_ray.registry``, so a registered name is valid with no edit here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import first_error, registered
from tasksim_ray.registry import BACKBONES, METRICS


class PreprocessConfig(_Strict):
    corr_threshold: float = Field(default=0.8, gt=0, le=1)
    """Drop a target whose training labels correlate with an already-kept target at |Pearson r| above this."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train, validation and test fractions of the shared molecule split (sum to 1)."""
    n_folds: int = Field(default=5, ge=1)
    """Seeded permutations (folds) of the training set, used by the learning curves."""

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> PreprocessConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError("preprocess.split must be three positive fractions summing to 1")
        return self


class ModelConfig(_Strict):
    """The backbone. The D-MPNN (molecules) is set by the typed keys below; every other registered
    backbone (``cgcnn``, ``chgnet``, ``mace``, ``alignn``, or one registered from user code) takes its
    constructor arguments from ``params``."""

    backbone: str = "dmpnn"
    """The backbone: a name in `tasksim_ray.registry.BACKBONES`."""
    hidden_dim: int = Field(default=300, gt=0)
    """D-MPNN: hidden size of the message passing."""
    depth: int = Field(default=3, ge=1)
    """D-MPNN: message passing steps."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """D-MPNN: dropout probability."""
    aggregation: Literal["norm", "mean", "sum"] = "norm"
    """D-MPNN: how atom states become a molecule vector (`norm`: sum divided by 100, as Chemprop)."""
    ffn_hidden_dim: int = Field(default=300, gt=0)
    """D-MPNN: hidden size of the prediction head."""
    ffn_layers: int = Field(default=2, ge=1)
    """D-MPNN: layers of the prediction head."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Constructor arguments of any backbone other than the D-MPNN."""

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
    """Training molecules per task (null: the whole training split)."""
    n_val: int | None = Field(default=None, gt=0)
    """Validation molecules per task (null: the whole validation split)."""
    fold: int = Field(default=0, ge=0)
    """Which seeded permutation of the training set the per-task models use."""
    max_epochs: int = Field(default=50, ge=1)
    """Most epochs per task model."""
    patience: int = Field(default=10, ge=1)
    """Early stopping: epochs without a better validation MAE."""
    batch_size: int = Field(default=64, gt=0)
    """Molecules per batch."""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Adam weight decay."""
    num_cpus: float = Field(default=1.0, gt=0)
    """CPUs each per-task training job asks Ray for."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs (fractions allowed) each per-task training job asks Ray for."""
    label_transform: list[Literal["standardise", "min-max", "log", "log1p"]] = Field(default_factory=list)
    """Steps applied to each task's labels before training, in order (`tasksim_ray.data.transforms`), fitted on its
    training split, stored with its model and inverted for every reported MAE: e.g. `[log1p]` for a heavy-tailed
    positive label (matminer's log-scaled variants exist for this reason). The loop standardises after them anyway."""


class ProbeConfig(_Strict):
    """``holdout`` samples QM9-style molecules outside every training split; ``file`` reads SMILES."""

    source: Literal["holdout", "file"] = "holdout"
    """`holdout`: molecules from the test split, outside every training set; `file`: read from `path`."""
    path: str | None = None
    """Molecules: a text file of SMILES (one a line) or a CSV/Parquet with a `smiles` column; crystals: a gzip-JSON
    structure table or a folder of CIF/POSCAR files."""
    size: int = Field(default=500, ge=3)
    """Probes to use: a seeded sample of this many when the source has more."""

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
    """Probes per batch streamed to the model hosts."""
    hosts: int | None = Field(default=None, ge=1)
    """Model host actors (null: one per `threads` CPUs, or per `gpu_fraction` of a GPU)."""
    host_memory_gb: float = Field(default=2.0, gt=0)
    """Models a host keeps loaded, in GB; the least recently used beyond it are evicted."""
    num_cpus: float = Field(default=0.5, gt=0)
    """CPUs each host asks Ray for."""
    threads: int = Field(default=2, ge=1)
    """Torch threads per CPU host."""
    gpu_fraction: float = Field(default=0.25, gt=0, le=1)
    """Fraction of a GPU each host asks for when GPUs are used."""
    use_gpu: Literal["auto", "always", "never"] = "auto"
    """`auto`: GPUs when the cluster has some now; `always`: ask for them even when none is up yet (autoscaling
    from zero); `never`."""
    layer: str = "graph"
    """Which features: `graph` (the backbone's graph-level features), `node`, or one of the backbone's named layers."""


class BootstrapConfig(_Strict):
    """Percentile CIs of RSA over probe resamples; ``n_boot: 0`` turns them off."""

    n_boot: int = Field(default=200, ge=0)
    """Bootstrap replicates over probe resamples (0: no intervals)."""
    level: float = Field(default=0.95, gt=0, lt=1)
    """Confidence level of the percentile intervals."""
    max_probes: int = Field(default=1000, ge=3)
    """Subsample larger probe sets to this many probes before bootstrapping."""


class DatasetFeaturesConfig(_Strict):
    """The inputs of dataset-distribution metrics (CSI): a seeded sample of every task's own training
    inputs, embedded by one shared model, per structure and/or per atom as the metrics need."""

    model: str | None = None
    """The model that embeds every task's inputs: a task name (default: the first task) or a `FOUNDATION_MODELS`
    name."""
    per_task: int = Field(default=500, ge=2)
    """Inputs sampled per task."""


class SimilarityConfig(_Strict):
    """The metrics compared (names in ``registry.METRICS``), each metric's options
    (``options.<metric>``, validated against its own options model), and RSA's probe bootstrap."""

    metrics: list[str] = Field(default_factory=lambda: ["rsa"], min_length=1)
    """Metrics to compute: names in `tasksim_ray.registry.METRICS`."""
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per metric, its options (`options.rsa.comparison`, `options.cmd.order`, `options.csi.per_structure`):
    validated against the metric's own options model."""
    bootstrap: BootstrapConfig = BootstrapConfig()
    """Bootstrap intervals over probe resamples, for the metrics that give them (RSA)."""
    dataset_features: DatasetFeaturesConfig = DatasetFeaturesConfig()
    """The shared model and sampling of the dataset-distribution metrics (CSI)."""

    @field_validator("metrics")
    @classmethod
    def _metrics_registered(cls, names: list[str]) -> list[str]:
        return [registered(METRICS, n) for n in names]

    @model_validator(mode="after")
    def _options_valid(self) -> SimilarityConfig:
        for name in self.options:  # a registered metric, with valid options (it need not run this time)
            if name not in METRICS:
                raise ValueError(f"similarity.options.{name}: {METRICS.unknown(name)}")
            self.options_for(name)
        return self

    def options_for(self, metric: str) -> dict[str, Any]:
        """The metric's options as keyword arguments: its model's defaults with ``options.<metric>``
        over them (a one-line error naming the key if they do not validate)."""
        model, given = METRICS.get(metric).options_model, self.options.get(metric, {})
        if model is None:
            if given:
                raise ValueError(f"similarity.options.{metric}: metric '{metric}' takes no options")
            return {}
        try:
            return model.model_validate(given).model_dump()
        except ValidationError as exc:
            raise ValueError(f"similarity.options.{metric}: {first_error(exc)}") from None

    def needs(self) -> set[str]:
        """Every input the configured metrics read (``MetricSpec.needs``)."""
        return {n for m in self.metrics for n in METRICS.get(m).needs}


class SelectionConfig(_Strict):
    """The subset is chosen on a metric of kind ``similarity`` (a threshold in [-1, 1], higher is closer)."""

    metric: str = "rsa"
    """The similarity the subset is selected on (a metric of kind `similarity`, computed in `similarity.metrics`)."""
    threshold: float = Field(default=0.5, ge=-1, le=1)
    """Task s covers task t when sim(t, s) is at least this."""

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
    """A folder of published CGCNN checkpoints (`*.pth.tar`) to use as the task models."""
    tasks: list[str] | None = None
    """A subset of the checkpoints' task names (null: all)."""


class RayConfig(_Strict):
    """Resources of the embedded local Ray (``num_cpus``, ``num_gpus``; ignored when connecting to a
    cluster, RAY_ADDRESS). ``pending_timeout_s``: how long a request no node of the cluster can run
    (a GPU on a CPU-only cluster, a node type the autoscaler cannot deliver, a node that died) may
    wait for one to appear before the run fails naming the resource; every request is also checked
    against the nodes and the autoscaler's node types before the first Ray task."""

    address: str | None = None
    """A Ray cluster to join (`RAY_ADDRESS` wins; null: start a local Ray)."""
    num_cpus: int | None = Field(default=None, gt=0)
    """CPUs of the local Ray (null: all of this machine's)."""
    num_gpus: int | None = Field(default=None, ge=0)
    """GPUs of the local Ray (null: Ray's own detection)."""
    include_dashboard: bool = False
    """Start the Ray dashboard with the local Ray."""
    pending_timeout_s: float = Field(default=600.0, gt=0)
    """Seconds a request no node can run may wait for one before the run fails naming the resource."""


class ServeConfig(_Strict):
    """``tasksim serve``'s limits on one POST /embed: at most ``max_inputs`` inputs, each of at most
    ``max_atoms`` atoms (a SMILES's atoms, a structure's sites); a request past either is refused
    with HTTP 413 before anything is featurised, so one request cannot hold a replica for minutes."""

    max_inputs: int = Field(default=1000, ge=1)
    """Most inputs in one request."""
    max_atoms: int = Field(default=1000, ge=1)
    """Most atoms (sites) in one input."""


class StorageConfig(_Strict):
    """Where artifacts are shared: ``<workdir>`` is mirrored at ``uri`` (a path, ``s3://`` or
    ``gs://``; None: local only). ``endpoint_override``/``region`` are for S3 and default to the
    AWS_ENDPOINT_URL(_S3)/AWS_REGION variables; credentials only ever come from the environment."""

    uri: str | None = None
    """Mirror `<workdir>` here so every node shares artifacts: a path, `s3://` or `gs://` (null: local only)."""
    endpoint_override: str | None = None
    """S3 endpoint of an S3-compatible store (default: `AWS_ENDPOINT_URL(_S3)`)."""
    region: str | None = None
    """S3 region (default: `AWS_REGION`)."""


