"""The registries: the one place that names backbones, similarity metrics, task sources and
foundation models. Config validation and the CLI read names from here, so a backbone registered
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


@dataclass(frozen=True)
class MetricSpec:
    """A task-similarity metric ``(SimilarityInputs, **options) -> T x T matrix``. ``kind`` says how to
    read it (similarity: higher is closer; distance: lower is closer; score: row s transfers to
    column t, not symmetric), ``needs`` which inputs it reads. ``compute`` may be a lazy string, so
    config validation reads kinds without importing scipy."""

    compute: Callable[..., Any] | str
    kind: Literal["similarity", "distance", "score"]
    needs: Literal["embeddings", "dataset_features", "labels"]
    title: str

    @property
    def fn(self) -> Callable[..., Any]:
        return load(self.compute) if isinstance(self.compute, str) else self.compute


@dataclass(frozen=True)
class FoundationModel:
    """A shipped pretrained model a config can name instead of a task (e.g. ``similarity.csi.model``):
    a registered backbone, its arguments, and the package whose weights (and version) it uses."""

    backbone: str
    hparams: dict[str, Any]
    package: str


# each backbone implements the interface documented in ``tasksim_ray.models``
BACKBONES: Registry[type] = Registry("backbone", {
    "dmpnn": "tasksim_ray.models.dmpnn:DMPNN",
    "cgcnn": "tasksim_ray.models.cgcnn:CGCNN",
    "chgnet": "tasksim_ray.models.chgnet:CHGNetBackbone",
    "mace": "tasksim_ray.models.mace:MACEBackbone",
    "alignn": "tasksim_ray.models.alignn:ALIGNNBackbone",
})

FOUNDATION_MODELS: Registry[FoundationModel] = Registry("foundation model", {
    "chgnet": FoundationModel("chgnet", {"model_name": "0.3.0", "pretrained": True, "freeze": True}, "chgnet"),
})

METRICS: Registry[MetricSpec] = Registry("metric", {
    "rsa": MetricSpec("tasksim_ray.similarity.rsa:rsa_matrix", "similarity", "embeddings", "RSA (Spearman of RDMs)"),
    "cka": MetricSpec("tasksim_ray.similarity.cka:cka_matrix", "similarity", "embeddings", "linear CKA"),
    "cmd": MetricSpec("tasksim_ray.similarity.cmd:cmd_matrix", "distance", "embeddings", "central moment discrepancy"),
    "csi": MetricSpec("tasksim_ray.similarity.frechet:frechet_matrix", "distance", "dataset_features",
                      "CSI (Frechet distance of datasets)"),
    "logme": MetricSpec("tasksim_ray.similarity.logme:logme_matrix", "score", "labels",
                        "LogME (row model -> column labels)"),
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

    payload = internal_kv._internal_kv_get(_kv_key(), namespace=_KV_NAMESPACE)
    if not payload:
        return False
    for k, table in cloudpickle.loads(payload).items():
        if k in _ALL:
            _ALL[k]._table.update({n: obj for n, obj in table.items() if n not in _ALL[k]._table})
    return name in _ALL[kind]._table
