"""Typed experiment configuration, validated on load.

A YAML file maps onto :class:`PipelineConfig`; unknown keys and wrong types are rejected with a
one-line message naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasksim_ray.errors import TasksimError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the tasks come from. ``targets`` order is the priority order of the target filter."""

    source: Literal["qm9pack", "moleculenet", "table"] = "qm9pack"
    path: str | None = None
    smiles_column: str = "smiles"
    id_column: str | None = None
    targets: list[str] | None = None
    units: dict[str, str] = Field(default_factory=dict)
    max_molecules: int | None = Field(default=None, gt=0)

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
    backbone: Literal["dmpnn"] = "dmpnn"
    hidden_dim: int = Field(default=300, gt=0)
    depth: int = Field(default=3, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    aggregation: Literal["norm", "mean", "sum"] = "norm"
    ffn_hidden_dim: int = Field(default=300, gt=0)
    ffn_layers: int = Field(default=2, ge=1)


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
    batch_size: int = Field(default=128, gt=0)
    actors_per_task: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, gt=0)
    gpu_fraction: float = Field(default=0.25, gt=0, le=1)
    layer: Literal["graph", "ffn"] = "graph"


class BootstrapConfig(_Strict):
    """Percentile CIs of RSA over probe resamples; ``n_boot: 0`` turns them off."""

    n_boot: int = Field(default=200, ge=0)
    level: float = Field(default=0.95, gt=0, lt=1)
    max_probes: int = Field(default=1000, ge=3)


class CSIConfig(_Strict):
    """Dataset similarity: every task's own training inputs embedded by one shared model."""

    model: str | None = None  # task whose model embeds all datasets (default: the first task)
    per_task: int = Field(default=500, ge=2)
    level: Literal["graph", "node"] = "graph"
    per_structure: int = Field(default=8, ge=1)  # node level: atoms drawn per molecule at most


MetricName = Literal["rsa", "csi", "cka", "cmd", "logme"]


class SimilarityConfig(_Strict):
    metrics: list[MetricName] = Field(default_factory=lambda: ["rsa"], min_length=1)
    comparison: Literal["spearman", "pearson", "kendall"] = "spearman"
    bootstrap: BootstrapConfig = BootstrapConfig()
    csi: CSIConfig = CSIConfig()
    cmd_order: int = Field(default=5, ge=1)
    memory_budget_gb: float = Field(default=8.0, gt=0)


class SelectionConfig(_Strict):
    metric: Literal["rsa", "cka"] = "rsa"
    threshold: float = Field(default=0.5, ge=-1, le=1)


class RegularizerConfig(_Strict):
    """L2-SP pulls transferred weights back to the pretrained ones; BSS shrinks the k smallest
    singular values of the batch feature matrix. ``none`` by default."""

    kind: Literal["none", "l2sp", "bss"] = "none"
    weight: float = Field(default=0.01, ge=0)
    bss_k: int = Field(default=1, ge=1)


class FinetuneConfig(_Strict):
    """How a target model is trained from a pretrained one (or from scratch, the baseline).

    ``strategy``: full (everything), head (new head, encoder frozen), last (last encoder layer +
    head), layers (head + parameters matching ``layers`` glob patterns). ``gradual_unfreeze`` > 0
    starts from the head and unfreezes one more encoder layer group every that many epochs.
    ``llrd`` multiplies the learning rate by this factor per layer group below the head."""

    strategy: Literal["full", "head", "last", "layers"] = "full"
    layers: list[str] = Field(default_factory=list)
    gradual_unfreeze: int = Field(default=0, ge=0)
    llrd: float | None = Field(default=None, gt=0, le=1)
    regularizer: RegularizerConfig = RegularizerConfig()
    lr: float = Field(default=1e-3, gt=0)
    max_epochs: int = Field(default=40, ge=1)
    patience: int = Field(default=8, ge=1)
    batch_size: int = Field(default=50, gt=0)

    @model_validator(mode="after")
    def _layers_given(self) -> FinetuneConfig:
        if self.strategy == "layers" and not self.layers:
            raise ValueError("finetune.layers must list parameter-name patterns when strategy is 'layers'")
        return self


class BudgetConfig(_Strict):
    """Multi-task pretraining under a fixed budget C = N samples per epoch x E epochs: give C and
    one of ``samples``, ``epochs`` or ``splits`` (a list of [N, E] pairs to try)."""

    total: int = Field(default=60_000, gt=0)
    samples: int | None = Field(default=None, gt=0)
    epochs: int | None = Field(default=None, gt=0)  # 10 when none of samples/epochs/splits is given
    splits: list[tuple[int, int]] | None = None
    sampling: Literal["uniform", "proportional", "temperature"] = "uniform"
    temperature: float = Field(default=2.0, gt=0)
    pool_per_task: int = Field(default=5000, gt=0)  # labelled training molecules per source task
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=50, gt=0)
    workers: int = Field(default=1, ge=1)  # > 1: data-parallel with Ray Train (DDP), same global batch
    worker_cpus: float = Field(default=1.0, gt=0)
    worker_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and all(raw.get(k) is None for k in ("samples", "epochs", "splits")):
            return {**raw, "epochs": 10}
        return raw

    @model_validator(mode="after")
    def _exact_split(self) -> BudgetConfig:
        from tasksim_ray.transfer.budget import resolve_splits

        resolve_splits(self.total, self.samples, self.epochs, self.splits)
        return self

    def resolved(self) -> list[tuple[int, int]]:
        """The (samples per epoch, epochs) splits this budget asks for."""
        from tasksim_ray.transfer.budget import resolve_splits

        return resolve_splits(self.total, self.samples, self.epochs, self.splits)


class MoEConfig(_Strict):
    """Mixture of frozen per-task experts: G = softmax(KeepTopK(theta, k)), penalty
    lambda (theta^T theta - 1)^2; the last encoder layer of each expert and a new head train."""

    k: int = Field(default=2, ge=1)
    penalty: float = Field(default=0.01, ge=0)
    init: Literal["uniform", "similarity"] = "uniform"
    expert_lr: float = Field(default=5e-3, gt=0)
    head_lr: float = Field(default=1e-2, gt=0)


DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "head": {"strategy": "head"},
    "last": {"strategy": "last"},
    "gradual + LLRD": {"gradual_unfreeze": 2, "llrd": 0.8},
    "full + L2-SP": {"regularizer": {"kind": "l2sp", "weight": 0.01}},
    "full + BSS": {"regularizer": {"kind": "bss", "weight": 0.001, "bss_k": 1}},
}


class TransferConfig(_Strict):
    """The transfer experiments: learning curves over (target, recipe, size, fold) cells.

    ``variants`` are fine-tuning recipes compared by the strategies study, each a set of
    overrides of ``finetune``; ``strategy_pairs`` the (target, source) pairs they run on."""

    tasks: list[str] | None = None  # kept tasks that take part (default: all kept tasks)
    sizes: list[int] = Field(default_factory=lambda: [100, 300, 1000], min_length=2)
    folds: int = Field(default=2, ge=1)
    n_val: int = Field(default=500, gt=0)
    n_test: int = Field(default=1000, gt=0)
    finetune: FinetuneConfig = FinetuneConfig()
    budget: BudgetConfig = BudgetConfig()
    moe: MoEConfig = MoEConfig()
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_VARIANTS), min_length=1)
    strategy_pairs: list[tuple[str, str]] = Field(default_factory=list)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _sizes_increase(self) -> TransferConfig:
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 2:
            raise ValueError("transfer.sizes must be increasing training-set sizes of at least 2")
        for target, source in self.strategy_pairs:
            if target == source:
                raise ValueError(f"transfer.strategy_pairs: target '{target}' cannot be its own source")
        self.variant_configs()
        return self

    def variant_configs(self) -> dict[str, FinetuneConfig]:
        """Each variant as a full fine-tuning config: ``finetune`` with the variant's keys replaced."""
        out = {}
        for name, override in self.variants.items():
            try:
                out[name] = FinetuneConfig.model_validate(self.finetune.model_dump() | override)
            except ValidationError as exc:
                raise ValueError(f"variant '{name}': {_first_error(exc)}") from None
        return out


class SearchConfig(_Strict):
    """Ray Tune + Optuna search over a recipe: pretraining subset, budget split, sampling scheme and
    fine-tuning settings, for ``targets`` trained on ``size`` molecules of fold ``fold``.

    Every trial pretrains (or reuses) a multi-task model under ``transfer.budget.total`` and
    fine-tunes each target, reporting the mean standardised validation MAE every epoch."""

    name: str = Field(default="search", pattern=r"^[A-Za-z0-9_.-]+$")
    targets: list[str] = Field(default_factory=list)  # default: the first transfer task
    size: int | None = Field(default=None, gt=1)  # default: the largest transfer size
    fold: int = Field(default=0, ge=0)
    subset_size: tuple[int, int] = (1, 3)
    seed_from_selection: bool = True  # first trials: the selected subset and its one-swap neighbours
    max_neighbours: int = Field(default=4, ge=0)
    splits: list[tuple[int, int]] | None = None  # (samples, epochs) options; default: the budget's
    samples_range: tuple[int, int] | None = None  # or: up to 6 log-spaced N in this range dividing the budget
    sampling: list[Literal["uniform", "proportional", "temperature"]] = Field(default_factory=lambda: ["uniform"])
    strategies: list[Literal["full", "head", "last"]] = Field(default_factory=lambda: ["full", "last"])
    lr: tuple[float, float] = (1e-4, 1e-2)
    regularizers: list[Literal["none", "l2sp", "bss"]] = Field(default_factory=lambda: ["none", "l2sp"])
    reg_weight: tuple[float, float] = (1e-4, 1e-1)
    batch_sizes: list[int] = Field(default_factory=lambda: [50])
    num_trials: int = Field(default=16, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    max_concurrent: int | None = Field(default=None, ge=1)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> SearchConfig:
        lo, hi = self.subset_size
        if not 1 <= lo <= hi:
            raise ValueError("search.subset_size must be [min, max] with 1 <= min <= max")
        for name in ("lr", "reg_weight"):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise ValueError(f"search.{name} must be [low, high] with 0 < low <= high")
        return self


class RayConfig(_Strict):
    """Resources of the embedded local Ray; ignored when connecting to a cluster (RAY_ADDRESS)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    num_gpus: int | None = Field(default=None, ge=0)
    include_dashboard: bool = False


class PipelineConfig(_Strict):
    name: str = "tasksim"
    workdir: str = "runs/tasksim"
    seed: int = 0
    tasks: list[str] | None = None
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    embed: EmbedConfig = EmbedConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    selection: SelectionConfig = SelectionConfig()
    transfer: TransferConfig = TransferConfig()
    search: SearchConfig = SearchConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _selection_metric_computed(self) -> PipelineConfig:
        if self.selection.metric not in self.similarity.metrics:
            raise ValueError(f"selection.metric '{self.selection.metric}' must be one of similarity.metrics "
                             f"{self.similarity.metrics}")
        splits = self.search.splits or []
        if any(n * e != self.transfer.budget.total for n, e in splits):
            raise ValueError(f"search.splits: every [samples, epochs] must multiply to the budget "
                             f"{self.transfer.budget.total}")
        if self.search.fold >= self.transfer.folds:
            raise ValueError(f"search.fold ({self.search.fold}) must be below transfer.folds ({self.transfer.folds})")
        if self.search.size and self.search.size > self.transfer.sizes[-1]:
            raise ValueError(f"search.size ({self.search.size}) exceeds the largest transfer size "
                             f"{self.transfer.sizes[-1]}")
        if self.transfer.folds > self.preprocess.n_folds:
            raise ValueError(f"transfer.folds ({self.transfer.folds}) exceeds preprocess.n_folds "
                             f"({self.preprocess.n_folds})")
        return self

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key '{key}': {msg}" if err["loc"] else msg


def parse_config(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise TasksimError(f"{source}: {_first_error(exc)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a YAML config; ``overrides`` are merged over it (dotted keys allowed)."""
    p = Path(path)
    if not p.is_file():
        raise TasksimError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise TasksimError(f"{p}: malformed YAML{where}") from None
    if not isinstance(raw, dict):
        raise TasksimError(f"{p}: top level must be a mapping of keys to values")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(raw, str(p))
