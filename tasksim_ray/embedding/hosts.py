"""Model hosts: a few warm Ray actors that hold many task models and embed batches for any of them.

Starting an actor costs seconds (a process that imports torch and torch_geometric), a forward pass
over a probe batch costs milliseconds, so actors follow the resources, not the models: one host per
CPU, or per GPU fraction asked when GPUs are used. A host loads a model on first use and keeps it,
evicting the least recently used ones beyond its memory budget. A batch's graphs are deserialised
and collated once, then run through every model asked for.

A :class:`HostGroup` belongs to one run: the stages that embed (probe embeddings, CSI dataset
features, MoE extractor features) share it, and :meth:`HostGroup.close` frees its resources.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn
from torch_geometric.data import Batch

from tasksim_ray.config import EmbedConfig
from tasksim_ray.featurize.graphstore import batch_from_bytes
from tasksim_ray.infra import resources
from tasksim_ray.infra.metrics import probes_embedded
from tasksim_ray.infra.resources import PendingGuard
from tasksim_ray.infra.runtime import cluster_cpus, cluster_gpus
from tasksim_ray.models import load_checkpoint

IMPORTED_AT = time.time()  # in a host: when its process had imported torch, PyG and the models
Embedded = dict[str, np.ndarray]  # model name -> values (node level adds "<name>__n" atom counts)


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def is_node_layer(layer: str) -> bool:
    """``node`` (the backbone's atom features) or ``node:<name>`` (one of its ``NODE_LAYERS``)."""
    return layer == "node" or layer.startswith("node:")


@torch.no_grad()
def embed_batch(model: nn.Module, batch: Batch, layer: str = "graph", name: str = "model") -> Embedded:
    """One model on one collated batch: ``name`` -> (n, dim) float32 rows, or for a node layer each
    input's atom vectors as float32 bytes plus ``<name>__n``, the atom counts."""
    probes_embedded(name, batch.num_graphs)
    if not is_node_layer(layer):  # "graph": the backbone's default graph-level layer
        emb = model.embed(batch) if layer == "graph" else model.embed(batch, layer)
        return {name: emb.float().cpu().numpy()}
    nodes = (model.embed_nodes(batch) if layer == "node" else model.embed_nodes(batch, layer.removeprefix("node:"))).float().cpu().numpy()
    counts = torch.bincount(batch.batch, minlength=batch.num_graphs).cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    rows = np.array([nodes[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])], dtype=object)
    return {name: rows, f"{name}__n": counts}


class ModelHost:
    """Holds task models (LRU within ``budget_bytes``) and embeds serialised graphs with them."""

    def __init__(self, budget_bytes: int, num_threads: int = 1) -> None:
        # a host's start-up, in wall-clock seconds since the epoch: process start, imports done, ready
        self.started = {"process": psutil.Process().create_time(), "imported": IMPORTED_AT}
        torch.set_num_threads(num_threads)
        gpu = bool(ray.get_gpu_ids()) if ray.is_initialized() else False
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.budget = budget_bytes
        self.models: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()
        self.loads = 0
        self.seconds = {"load": 0.0, "decode": 0.0, "forward": 0.0}  # where a host's time goes
        self.started["ready"] = time.time()

    def model(self, directory: str) -> nn.Module:
        """The model saved in ``directory``, loaded on first use; least recently used ones beyond
        the budget are dropped (the one just asked for always stays)."""
        if directory in self.models:
            self.models.move_to_end(directory)
            return self.models[directory][0]
        start = time.perf_counter()
        model, _ = load_checkpoint(Path(directory), self.device)
        self.seconds["load"] += time.perf_counter() - start
        self.loads += 1
        self.models[directory] = (model, model_bytes(model))
        while len(self.models) > 1 and sum(size for _, size in self.models.values()) > self.budget:
            self.models.popitem(last=False)
        return model

    def embed(self, graphs: Iterable[bytes], models: dict[str, str], layer: str = "graph") -> Embedded:
        """Each of ``models`` (name -> model folder) on one batch of serialised graphs."""
        start = time.perf_counter()
        batch = batch_from_bytes(list(graphs)).to(self.device)
        self.seconds["decode"] += time.perf_counter() - start
        out: Embedded = {}
        for name, directory in models.items():
            model = self.model(directory)
            start = time.perf_counter()
            out |= embed_batch(model, batch, layer, name)
            self.seconds["forward"] += time.perf_counter() - start
        return out

    def stats(self) -> dict[str, Any]:
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        return {"pid": os.getpid(), "node": node, "loaded": len(self.models), "loads": self.loads,
                "device": str(self.device), "threads": torch.get_num_threads(), "seconds": dict(self.seconds),
                "started": self.started}


@dataclass(frozen=True)
class HostPlan:
    """How many hosts and what each asks of Ray."""

    n_hosts: int
    num_cpus: float
    num_gpus: float
    threads: int  # torch threads per host: the node's cores shared out, not the (smaller) CPU ask


def plan_hosts(cfg: EmbedConfig, n_models: int) -> HostPlan:
    """One host per GPU fraction (at most one per model; ``use_gpu: always`` also before an
    autoscaling cluster shows its first GPU, counting one) or per ``embed.threads`` CPUs;
    ``embed.hosts`` overrides the count. The hosts' CPU asks leave one CPU free for Ray Data's read
    tasks; a CPU host's torch threads share out the cores (nothing else runs while hosts embed: the
    stages that follow release them)."""
    gpus, cpus = cluster_gpus(), cluster_cpus()
    use_gpu = cfg.use_gpu == "always" or (cfg.use_gpu == "auto" and gpus > 0)
    if use_gpu:
        slots = int(max(gpus, 1.0) / cfg.gpu_fraction + 1e-9)
        n = cfg.hosts or max(1, min(slots, n_models))
    else:
        n = cfg.hosts or max(1, int(cpus // cfg.threads))
    share = min(cfg.num_cpus, max(cpus - 1.0, 0.5) / n)
    threads = 1 if use_gpu else max(1, min(cfg.threads, int(cpus // n)))
    return HostPlan(n, share, cfg.gpu_fraction if use_gpu else 0.0, threads)


def spread(plan: HostPlan) -> list[Any]:
    """Where each host goes: round-robin over the alive nodes that can run one and keep a CPU free
    for Ray Data (packed hosts would share one node's cores; Ray's own SPREAD may put them
    together), else Ray's SPREAD (no such node, or GPU workers an autoscaler has still to start)."""
    shape = {"CPU": plan.num_cpus + 1.0, "GPU": plan.num_gpus}
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and resources.fits(shape, n["Resources"]))
    if not nodes:
        return ["SPREAD"] * plan.n_hosts
    return [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) for i in range(plan.n_hosts)]


_hosts_named = itertools.count()


def _host_name() -> str:
    """``model-host-0``, ``model-host-1``, ...: the hosts' names on the Ray dashboard, numbered on
    through this driver's life (a named actor's name is unique in the driver's namespace, and a
    closed group's hosts may not be gone yet when the next group starts)."""
    return f"model-host-{next(_hosts_named)}"


class HostGroup:
    """A run's model hosts, started on first use and fed batch by batch (a bounded number in flight
    per host, so the object store holds only a few batches at a time)."""

    def __init__(self, cfg: EmbedConfig, n_models: int = 1) -> None:
        self.cfg = cfg
        self.plan = plan_hosts(cfg, n_models)
        budget = int(cfg.host_memory_gb * 1024**3)
        actor = ray.remote(ModelHost)
        self.created = time.time()
        self.calls = 0  # map calls so far: the first one pays the start-up
        # a host whose node dies (even one placed there before Ray noticed) restarts on another node
        # and its batches run again there: embedding a batch is a pure function of it
        self.hosts = [actor.options(num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus, name=_host_name(),
                                    scheduling_strategy=where, max_restarts=2, max_task_retries=2)
                      .remote(budget, self.plan.threads) for where in spread(self.plan)]

    def map(self, batches: Iterable[list[bytes]], models: dict[str, str], layer: str = "graph",
            in_flight: int = 3) -> Iterator[Embedded]:
        """Embedded batches in the order given, spread round-robin over the hosts."""
        self.calls += 1
        pending: list[ray.ObjectRef] = []
        limit = in_flight * len(self.hosts)
        shape = {"CPU": self.plan.num_cpus, "GPU": self.plan.num_gpus}
        guard = PendingGuard()  # a host no node can start (a GPU that never comes) fails, not hangs
        for i, graphs in enumerate(batches):
            host = self.hosts[i % len(self.hosts)]
            pending.append(host.embed.options(name=f"embed:{','.join(models)}").remote(graphs, models, layer))
            if len(pending) >= limit:
                yield resources.get(pending.pop(0), "a model host", shape, guard)
        for ref in pending:
            yield resources.get(ref, "a model host", shape, guard)

    def stats(self) -> list[dict[str, Any]]:
        """Each reachable host's counters. They are telemetry: a host whose node died after its
        batches came back (the batches themselves raise if lost) is left out, not an error."""
        out = []
        for ref in [h.stats.remote() for h in self.hosts]:
            try:
                out.append(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                continue
        return out

    def startup(self, stats: list[dict[str, Any]]) -> dict[str, float]:
        """The slowest host's start-up from the group's creation, read from the hosts' ``stats``:
        until its process ran (``spawn_s``: a worker process started, or an idle one taken), its
        imports were done (``import_s``) and it was ready (``ready_s``)."""
        starts = [h["started"] for h in stats]
        return {f"{key}_s": round(max(0.0, max(s[name] for s in starts) - self.created), 3)
                for key, name in (("spawn", "process"), ("import", "imported"), ("ready", "ready"))}

    def close(self) -> None:
        for host in self.hosts:
            ray.kill(host)
        self.hosts = []
