"""The registries: the one place that names backbones, similarity metrics, task sources,
foundation models and transfer studies. Config validation and the CLI read names from here, so a backbone registered
from user code (``BACKBONES.register("mine", MyBackbone)``) is valid in a config with no library edit.

This module sits at the bottom (with ``errors``): the built-in entries are lazy ``"module:attr"``
strings, imported on first ``get``, so naming a backbone never imports torch, chgnet or mace.

Ray workers are separate processes. ``share_with_workers`` (called by ``infra.runtime.ensure_ray``
before any Ray work) puts the driver's own registrations, pickled by value, in the cluster's
key-value store under the job's id; a worker that misses a name pulls them from there.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from tasksim_ray.errors import TasksimError

T = TypeVar("T")
_KV_NAMESPACE = "tasksim_registry"
_ALL: dict[str, Registry[Any]] = {}


def load(entry: str) -> Any:
    """Import a lazy ``"module:attr"`` entry."""
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Names -> objects (or lazy ``"module:attr"`` strings, imported on first ``get``)."""

    def __init__(self, kind: str, table: dict[str, T | str]) -> None:
        self.kind = kind
        self._table: dict[str, T | str] = dict(table)
        self._added: dict[str, T | str] = {}  # registered at run time: what workers must be sent
        _ALL[kind] = self

    def register(self, name: str, obj: T | str) -> None:
        self._table[name] = obj
        self._added[name] = obj

    def names(self) -> list[str]:
        return sorted(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._table or _pull_from_driver(self.kind, name))

    def unknown(self, name: str) -> str:
        """The one-line message for a name nobody registered."""
        return f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}"

    def get(self, name: str) -> T:
        if name not in self:
            raise TasksimError(self.unknown(name))
        entry = self._table[name]
        if isinstance(entry, str):
            entry = self._table[name] = load(entry)
        return entry  # type: ignore[return-value]

    __getitem__ = get

    def __reduce__(self) -> tuple[Callable[[str], Registry[Any]], tuple[str]]:
        """Pickled (into a Ray worker) as a reference: the worker uses its own registry of this kind."""
        return _registry, (self.kind,)


def _registry(kind: str) -> Registry[Any]:
    return _ALL[kind]


Need = Literal["embeddings", "labels", "dataset_features", "node_features"]


@dataclass(frozen=True)
class MetricSpec:
    """A task-similarity metric ``(SimilarityInputs, **options) -> T x T matrix``. ``kind`` says how to
    read it (similarity: higher is closer; distance: lower is closer; score: row s transfers to
    column t, not symmetric). ``needs`` names the inputs it reads, and the pipeline computes exactly
    those: ``embeddings`` (every task model's embeddings of the probe set), ``labels`` (the probes'
    task labels), ``dataset_features`` / ``node_features`` (every task's own inputs embedded by one
    shared model, per structure / per atom). ``options`` is the pydantic model of its options
    (``similarity.options.<name>``), ``intervals`` an optional ``(inputs, options, bootstrap, seed) ->
    BootstrapCI | None`` giving intervals over probe resamples. Callables may be lazy strings, so config
    validation reads a spec without importing scipy."""

    compute: Callable[..., Any] | str
    kind: Literal["similarity", "distance", "score"]
    needs: tuple[Need, ...] | Need
    title: str
    options: type | str | None = None
    intervals: Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.needs, str):  # one need may be given bare
            object.__setattr__(self, "needs", (self.needs,))

    @property
    def fn(self) -> Callable[..., Any]:
        return load(self.compute) if isinstance(self.compute, str) else self.compute

    @property
    def options_model(self) -> type | None:
        return load(self.options) if isinstance(self.options, str) else self.options

    @property
    def intervals_fn(self) -> Callable[..., Any] | None:
        return load(self.intervals) if isinstance(self.intervals, str) else self.intervals


@dataclass(frozen=True)
class FoundationModel:
    """A shipped pretrained model a config can name instead of a task (e.g. ``similarity.csi.model``):
    a registered backbone, its arguments, and the package whose weights (and version) it uses."""

    backbone: str
    hparams: dict[str, Any]
    package: str


@dataclass(frozen=True)
class StudySpec:
    """A transfer study (``tasksim_ray.transfer.study.Study`` subclass, may be a lazy string), the CLI
    verb that runs it alone (None: only through ``tasksim study``), that verb's one-line help and the
    options it takes (``target``: --target; ``source``: repeatable --source). The CLI builds the
    verbs from these fields, so listing the commands imports no study. ``config`` is the pydantic
    model of the study's own section of the config, ``transfer.<name>`` (a lazy string may name a
    model in ``tasksim_ray.config``: config sits below the studies and never imports them)."""

    study: type | str
    verb: str | None
    help: str
    options: tuple[Literal["target", "source"], ...] = ()
    config: type | str | None = None

    @property
    def cls(self) -> type:
        return load(self.study) if isinstance(self.study, str) else self.study

    @property
    def config_model(self) -> type | None:
        return load(self.config) if isinstance(self.config, str) else self.config


# each backbone implements the interface documented in ``tasksim_ray.models``
BACKBONES: Registry[type] = Registry("backbone", {
    "dmpnn": "tasksim_ray.models.dmpnn:DMPNN",
    "cgcnn": "tasksim_ray.models.cgcnn:CGCNN",
    "chgnet": "tasksim_ray.models.chgnet:CHGNetBackbone",
    "mace": "tasksim_ray.models.mace:MACEBackbone",
    "alignn": "tasksim_ray.models.alignn:ALIGNNBackbone",
    "sevenn": "tasksim_ray.models.sevenn:SevenNetBackbone",
})

FOUNDATION_MODELS: Registry[FoundationModel] = Registry("foundation model", {
    "chgnet": FoundationModel("chgnet", {"model_name": "0.3.0", "pretrained": True, "freeze": True}, "chgnet"),
    "sevennet0": FoundationModel("sevenn", {"model_name": "SevenNet_0__11July2024", "pretrained": True,
                                            "freeze": True}, "sevenn"),
})

_C = "tasksim_ray.config.metrics"
METRICS: Registry[MetricSpec] = Registry("metric", {
    "rsa": MetricSpec("tasksim_ray.similarity.engine:rsa_similarity", "similarity", ("embeddings",),
                      "RSA (Spearman of RDMs)", f"{_C}:RSAOptions", "tasksim_ray.similarity.bootstrap:rsa_intervals"),
    "cka": MetricSpec("tasksim_ray.similarity.cka:cka_matrix", "similarity", ("embeddings",), "linear CKA"),
    "cmd": MetricSpec("tasksim_ray.similarity.cmd:cmd_matrix", "distance", ("embeddings",),
                      "central moment discrepancy", f"{_C}:CMDOptions"),
    "csi": MetricSpec("tasksim_ray.similarity.frechet:csi_matrix", "distance", ("node_features",),
                      "CSI (Frechet distance of datasets, node level)", f"{_C}:CSIOptions"),
    "csi_graph": MetricSpec("tasksim_ray.similarity.frechet:frechet_matrix", "distance", ("dataset_features",),
                            "CSI on graph-level features"),
    "logme": MetricSpec("tasksim_ray.similarity.logme:logme_matrix", "score", ("embeddings", "labels"),
                        "LogME (row model -> column labels)"),
})

_S, _K = "tasksim_ray.transfer.studies", "tasksim_ray.config.studies"
# what ``tasksim study`` runs (``transfer.studies``); each is one module of tasksim_ray.transfer.studies, its own
# config section (``transfer.<name>``) the model named by ``config``
STUDIES: Registry[StudySpec] = Registry("study", {
    "curves": StudySpec(f"{_S}.curves:CurvesStudy", "curves", "Learning curves of --target: scratch and "
                        "fine-tuned from each --source (default: every other task).", ("target", "source")),
    "matrix": StudySpec(f"{_S}.matrix:MatrixStudy", "transfer-matrix", "Gain of every target from every other "
                        "task's model, and how well each similarity predicts it.", config=f"{_K}:MatrixStudyConfig"),
    "subset": StudySpec(f"{_S}.subset:SubsetStudy", "subset-study", "Per target: pretrain on the selected diverse "
                        "subset vs all other tasks under the budget, then fine-tune.",
                        config=f"{_K}:SubsetStudyConfig"),
    "moe": StudySpec(f"{_S}.moe:MoEStudy", "moe", "Per target: a mixture of the other tasks' frozen experts with "
                     "top-k gating.", config=f"{_K}:MoEConfig"),
    "strategies": StudySpec(f"{_S}.strategies:StrategiesStudy", "strategies", "Fine-tuning variants "
                            "(transfer.variants) on --target from each --source, or on transfer.strategy_pairs.",
                            ("target", "source")),
    "methods": StudySpec(f"{_S}.methods:MethodsStudy", "methods", "Per task and split seed, on the whole training "
                         "split: each of transfer.methods (scratch, fine-tuning, mixtures of published extractors)."),
    "foundation": StudySpec(f"{_S}.foundation:FoundationStudy", "foundation", "Per task and split seed: each "
                            "transfer.foundation model fine-tuned with each recipe, against random initialisation."),
    "budget": StudySpec(f"{_S}.budget:BudgetStudy", "budget", "Per target: every other task alone, and all of them, "
                        "pretrained under one budget; does the source a similarity picks beat the budget spread "
                        "over all?", config=f"{_K}:BudgetConfig"),
    "ptft": StudySpec(f"{_S}.ptft:PTFTStudy", "ptft", "Per target: fine-tuned from each other task's model and from "
                      "one model pretrained on all of them (MPT); transfer.ood targets are never a source.",
                      config=f"{_K}:PTFTConfig"),
})

# data.source -> a loader ``(DataConfig) -> TaskTable``; the crystal sources share one loader
SOURCES: Registry[Callable[..., Any]] = Registry("source", {
    "qm9pack": "tasksim_ray.data.molecules:load_qm9pack",
    "moleculenet": "tasksim_ray.data.molecules:load_moleculenet",
    "table": "tasksim_ray.data.molecules:load_table",
    **{name: "tasksim_ray.data.crystals:load_crystal_tasks"
       for name in ("crystals", "structure_table", "id_prop", "matbench")},
})


def _kv_key() -> bytes:
    import ray

    return f"registrations-{ray.get_runtime_context().get_job_id()}".encode()


def share_with_workers() -> None:
    """Publish the driver's run-time registrations to this Ray job's workers (Ray must be running).
    Objects from modules outside this package go by value: a worker need not import the user's code."""
    added = {kind: dict(reg._added) for kind, reg in _ALL.items() if reg._added}
    if not added:
        return
    from ray import cloudpickle
    from ray.experimental import internal_kv

    modules = {getattr(obj, "__module__", None) for table in added.values() for obj in table.values()}
    by_value = [sys.modules[m] for m in modules if m and m in sys.modules and m != "__main__"
                and not m.startswith("tasksim_ray") and m not in cloudpickle.list_registry_pickle_by_value()]
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(added)
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)
    internal_kv._internal_kv_put(_kv_key(), payload, overwrite=True, namespace=_KV_NAMESPACE)


def _pull_from_driver(kind: str, name: str) -> bool:
    """In a Ray worker (or driver) of a job: adopt the driver's shared registrations; True if ``name`` is now known."""
    ray = sys.modules.get("ray")  # never import Ray just to look a name up
    if ray is None or not ray.is_initialized():
        return False
    from ray import cloudpickle
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():  # Ray up but this process has no GCS client (yet)
        return False
    payload = internal_kv._internal_kv_get(_kv_key(), namespace=_KV_NAMESPACE)
    if not payload:
        return False
    for k, table in cloudpickle.loads(payload).items():
        if k in _ALL:
            _ALL[k]._table.update({n: obj for n, obj in table.items() if n not in _ALL[k]._table})
    return name in _ALL[kind]._table
