"""The embedding service: per-task models held by Ray actors, inputs streamed by Ray Data.

Molecules and crystals are featurised once into a binary graph column; Ray Data then streams
blocks through one actor pool per model (``map_batches`` with ``ActorPoolStrategy``), each actor
adding that model's embedding column, and writes Parquet. With GPUs in the cluster each actor asks
for a fraction of one, so several task models share a device. Graph-level layers give one vector
per input; ``node`` gives each input's per-atom vectors (stored as float32 bytes + atom count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy
from torch_geometric.data import Batch

from tasksim_ray.config import CrystalGraphConfig, EmbedConfig
from tasksim_ray.data.tasks import INPUT_COLUMNS
from tasksim_ray.featurize.graphstore import graph_from_bytes, graph_to_bytes
from tasksim_ray.featurize.inputs import featurize_inputs
from tasksim_ray.featurize.molecule import FeaturizeReport
from tasksim_ray.infra.metrics import probes_embedded
from tasksim_ray.infra.runtime import cluster_cpus, cluster_gpus
from tasksim_ray.models import load_checkpoint
from tasksim_ray.training.device import choose_device

ID, GRAPH = "id", "graph"


def emb_column(name: str) -> str:
    return f"emb__{name}"


def graph_table(inputs: list[str], ids: list[str], kind: str = "molecule", where: str = "probe set",
                graph: CrystalGraphConfig | None = None) -> tuple[pd.DataFrame, FeaturizeReport]:
    """Featurise inputs once into an (id, input, graph) table; invalid molecules are reported and
    skipped, a bad crystal is an error naming its id."""
    graphs, report = featurize_inputs(kind, inputs, where, ids, graph)
    keep = [i for i, g in enumerate(graphs) if g is not None]
    return pd.DataFrame({ID: [ids[i] for i in keep], INPUT_COLUMNS[kind]: [inputs[i] for i in keep],
                         GRAPH: [graph_to_bytes(graphs[i]) for i in keep]}), report


class TaskEmbedder:
    """Holds one model; called by Ray Data on batches of serialised graphs."""

    def __init__(self, model_dir: str, column: str, layer: str = "graph", num_threads: int = 1,
                 task: str = "") -> None:
        torch.set_num_threads(num_threads)
        self.task = task
        self.device = choose_device()
        self.model, _ = load_checkpoint(Path(model_dir), self.device)
        self.column, self.layer = column, layer

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graphs = Batch.from_data_list([graph_from_bytes(b) for b in batch[GRAPH]]).to(self.device)
        probes_embedded(self.task, graphs.num_graphs)
        if self.layer != "node":  # "graph": the backbone's default graph-level layer
            emb = self.model.embed(graphs) if self.layer == "graph" else self.model.embed(graphs, self.layer)
            batch[self.column] = emb.float().cpu().numpy()
            return batch
        nodes = self.model.embed_nodes(graphs).float().cpu().numpy()
        counts = torch.bincount(graphs.batch, minlength=graphs.num_graphs).cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        batch[self.column] = np.array([nodes[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])], dtype=object)
        batch[f"{self.column}__n"] = counts
        return batch


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float


def actor_resources(cfg: EmbedConfig, n_models: int) -> ActorResources:
    """Fractional GPUs per ``cfg.use_gpu`` (``always`` on a cluster that autoscales GPUs from zero,
    where there are none to see yet); the CPU share is capped so that every model's actor pool
    starts at once (a chained pipeline needs all of them alive) and one CPU stays free for Ray
    Data's read and write tasks."""
    n_actors = n_models * cfg.actors_per_task
    share = min(cfg.num_cpus, max(cluster_cpus() - 1.0, 0.5) / n_actors)
    gpu = cfg.use_gpu == "always" or (cfg.use_gpu == "auto" and cluster_gpus() > 0)
    return ActorResources(num_cpus=share, num_gpus=cfg.gpu_fraction if gpu else 0.0)


def embed_table(table: Path, model_dirs: dict[str, Path], cfg: EmbedConfig, out_dir: Path, layer: str = "graph") -> None:
    """Stream an (id, graph) Parquet table through every model and write ``id`` + embeddings."""
    res = actor_resources(cfg, len(model_dirs))
    ds = ray.data.read_parquet(str(table))
    columns = [ID]
    for name, directory in model_dirs.items():
        ds = ds.map_batches(
            TaskEmbedder,
            fn_constructor_kwargs={"model_dir": str(directory), "column": emb_column(name), "layer": layer,
                                   "task": name},
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=cfg.actors_per_task),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
        )
        columns += [emb_column(name)] + ([f"{emb_column(name)}__n"] if layer == "node" else [])
    ds.select_columns(columns).write_parquet(str(out_dir))


def read_embedded(directory: Path, names: list[str], layer: str = "graph") -> tuple[list[str], dict[str, np.ndarray | list[np.ndarray]]]:
    """Ids (sorted) and, per model, an (n, dim) matrix, or per-molecule (n_atoms, dim) arrays for ``node``."""
    frame = pq.read_table(directory).to_pandas().sort_values(ID, kind="stable").reset_index(drop=True)
    out: dict[str, np.ndarray | list[np.ndarray]] = {}
    for name in names:
        col = frame[emb_column(name)]
        if layer == "node":
            counts = frame[f"{emb_column(name)}__n"].to_numpy()
            out[name] = [np.frombuffer(b, np.float32).reshape(n, -1) for b, n in zip(col, counts)]
        else:
            out[name] = np.stack(col.to_numpy()).astype(np.float32)
    return frame[ID].astype(str).tolist(), out


def save_embedding(path: Path, ids: list[str], emb: np.ndarray) -> None:
    """One task's embeddings as Parquet: ``id`` and a fixed-size float32 ``embedding`` list."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    table = pa.table({ID: pa.array(ids), "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})
    pq.write_table(table, path)


def load_embedding(path: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path)
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy().reshape(len(table), col.type.list_size)
    return table.column(ID).to_pylist(), emb
