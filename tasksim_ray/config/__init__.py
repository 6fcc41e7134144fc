"""Typed experiment configuration, validated on load.

A YAML file maps onto :class:`PipelineConfig`; unknown keys and wrong types are rejected with a
one-line message naming the key, so a typo never silently falls back to a default. Sections live
in one module per concern (``data``, ``stages``, ``transfer``, ``search``); everything is importable from
``tasksim_ray.config``.
"""

from __future__ import annotations

import inspect
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, create_model, model_validator

from tasksim_ray.config.base import Strict, first_error
from tasksim_ray.config.search import SearchConfig
from tasksim_ray.config.data import BinaryConfig, CrystalGraphConfig, DataConfig, FileConfig, SplitConfig
from tasksim_ray.config.stages import (
    BootstrapConfig,
    DatasetFeaturesConfig,
    EmbedConfig,
    ModelConfig,
    PreprocessConfig,
    ProbeConfig,
    PublishedConfig,
    RayConfig,
    SelectionConfig,
    ServeConfig,
    SimilarityConfig,
    StorageConfig,
    TrainConfig,
)
from tasksim_ray.config.studies import (
    DEFAULT_VARIANTS,
    BudgetConfig,
    MoEConfig,
    RecipeConfig,
    ScratchConfig,
    SourcesConfig,
)
from tasksim_ray.config.transfer import FinetuneConfig, RegularizerConfig, TransferConfig, transfer_model
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import BACKBONES, FOUNDATION_MODELS, METRICS

__all__ = ["DEFAULT_VARIANTS", "BinaryConfig", "BootstrapConfig", "BudgetConfig", "CrystalGraphConfig", "DataConfig",
           "DatasetFeaturesConfig", "EmbedConfig", "FileConfig", "FinetuneConfig", "MoEConfig", "ModelConfig",
           "PipelineConfig", "PreprocessConfig", "ProbeConfig", "PublishedConfig", "RayConfig", "RecipeConfig",
           "RegularizerConfig", "ScratchConfig", "SearchConfig", "SelectionConfig", "ServeConfig", "SimilarityConfig",
           "SourcesConfig", "SplitConfig", "TrainConfig", "TransferConfig", "load_config", "parse_config"]


class PipelineConfig(Strict):
    name: str = "tasksim"
    """The run's name, shown in reports."""
    workdir: str = "runs/tasksim"
    """Where artifacts, reports and searches are written."""
    seed: int = 0
    """Seed of every split, sample and model initialisation."""
    tasks: list[str] | None = None
    """Task names to keep after loading (null: all)."""
    data: DataConfig = DataConfig()
    """Where the tasks come from."""
    preprocess: PreprocessConfig = PreprocessConfig()
    """The correlation filter, the shared split and the folds."""
    model: ModelConfig = ModelConfig()
    """The backbone of the per-task models."""
    train: TrainConfig = TrainConfig()
    """Per-task pretraining."""
    probe: ProbeConfig = ProbeConfig()
    """The probe set every task model embeds."""
    embed: EmbedConfig = EmbedConfig()
    """The embedding service's model hosts."""
    similarity: SimilarityConfig = SimilarityConfig()
    """The similarity metrics."""
    selection: SelectionConfig = SelectionConfig()
    """Choosing the diverse pretraining subset."""
    transfer: TransferConfig = TransferConfig()
    """The transfer studies."""
    search: SearchConfig = SearchConfig()
    """The Ray Tune + Optuna recipe search."""
    ray: RayConfig = RayConfig()
    """The local Ray, or the cluster to join."""
    published: PublishedConfig = PublishedConfig()
    """Published checkpoints used as the task models (no training)."""
    storage: StorageConfig = StorageConfig()
    """Shared artifact storage for clusters."""
    serve: ServeConfig = ServeConfig()
    """``tasksim serve``'s request limits."""

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
        if self.published.path:
            needs_data = [m for m in self.similarity.metrics if set(METRICS.get(m).needs) - {"embeddings"}]
            if needs_data or self.probe.source != "file":
                raise ValueError(f"published models: use probe.source 'file' and probe-based metrics only "
                                 f"(rsa, cka, cmd){'; not ' + str(needs_data) if needs_data else ''}")
        csi, known = self.similarity.dataset_features.model, self.tasks or self.data.targets
        if csi and csi not in FOUNDATION_MODELS and known is not None and csi not in known:
            raise ValueError(f"similarity.dataset_features.model '{csi}' is neither a task ({', '.join(known)}) "
                             f"nor a registered foundation model ({', '.join(FOUNDATION_MODELS.names())})")
        if self.tasks is not None and (stray := [t for t in self.transfer.ood if t not in self.tasks]):
            raise ValueError(f"transfer.ood: {stray} are not among tasks {self.tasks}")
        if self.transfer.folds > self.preprocess.n_folds:
            raise ValueError(f"transfer.folds ({self.transfer.folds}) exceeds preprocess.n_folds "
                             f"({self.preprocess.n_folds})")
        return self

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)


@cache
def _pipeline_model(transfer: type[TransferConfig]) -> type[PipelineConfig]:
    if transfer is TransferConfig:
        return PipelineConfig
    return create_model("PipelineConfig", __base__=PipelineConfig, __module__=__name__,
                        transfer=(transfer, transfer()))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    """Validate a config; ``transfer`` has a section for every registered study with options, those
    registered after import (from user code) included."""
    try:
        cfg = _pipeline_model(transfer_model()).model_validate(raw)
    except ValidationError as exc:
        raise TasksimError(f"{source}: {first_error(exc)}") from None
    return with_graph_hparams(cfg, source)


def with_graph_hparams(cfg: PipelineConfig, source: str = "<config>") -> PipelineConfig:
    """The model's hyperparameters that the crystal graph settings fix (CGCNN's bond-feature width is
    the number of Gaussian centres of ``data.graph``; ALIGNN's neighbour list follows its radius and
    neighbour count unless ``model.params`` sets them), so a model is always built for the graphs
    it will be fed. A backbone declares them with ``graph_hparams(graph)``; those in its
    ``GRAPH_WIDTHS`` cannot be set to anything else. Only values that differ from the backbone's
    own defaults are added, so a default graph leaves the config (and its cache keys) as written."""
    if cfg.model.backbone == "dmpnn" or (cfg.data.graph == CrystalGraphConfig() and not cfg.model.params):
        return cfg  # nothing to derive or to check: the backbone is not imported
    backbone = BACKBONES.get(cfg.model.backbone)
    derive = getattr(backbone, "graph_hparams", None)
    if derive is None:
        return cfg
    defaults = {k: p.default for k, p in inspect.signature(backbone).parameters.items()}
    params = dict(cfg.model.params)
    for key, value in derive(cfg.data.graph).items():
        if key not in params:
            if defaults.get(key) != value:
                params[key] = value
        elif key in getattr(backbone, "GRAPH_WIDTHS", ()) and params[key] != value:
            g = cfg.data.graph
            raise TasksimError(f"{source}: model.params.{key} is {params[key]} but data.graph (radius {g.radius:g}, "
                               f"step {g.step:g}, dmin {g.dmin:g}) gives {value}; drop model.params.{key} "
                               "(it follows data.graph)")
    if params == cfg.model.params:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"params": params})})


def says_what_to_run(raw: dict[str, Any]) -> bool:
    """A config names its data (``data`` with at least one key) or published checkpoints."""
    data, published = raw.get("data"), raw.get("published")
    return bool(isinstance(data, dict) and data) or bool(isinstance(published, dict) and published.get("path"))


class DuplicateKey(yaml.YAMLError):
    """A mapping names the same key twice (YAML would keep the later value without a word)."""

    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first} and {line}); keep one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key in any mapping, naming it (dotted) and its lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(str(key), line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a YAML config; ``overrides`` are merged over it (dotted keys allowed)."""
    p = Path(path)
    if not p.is_file():
        raise TasksimError(f"{p}: config file not found")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (safe)
    except UnicodeDecodeError as exc:
        raise TasksimError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except DuplicateKey as exc:
        raise TasksimError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise TasksimError(f"{p}: malformed YAML{where}") from None
    if not isinstance(raw, dict):
        raise TasksimError(f"{p}: top level must be a mapping of keys to values")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TasksimError(f"--set {dotted}: '{'.'.join(parents[:depth + 1])}' is a value, not a section")
        node[leaf] = value
    cfg = parse_config(raw, str(p))  # a misspelt key first: it may be the missing section
    if not says_what_to_run(raw):
        what = "is empty" if not raw else "names no data"
        raise TasksimError(f"{p}: the config {what}: give data.source and data.path (or published.path) to say "
                           "what to run; `tasksim demo` runs the shipped demo")
    return cfg
