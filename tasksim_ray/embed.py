"""The embedding service: per-task models held by Ray actors, the probe set streamed by Ray Data.

The probe set is featurised once into a binary graph column; Ray Data then streams its blocks
through one actor pool per task model (``map_batches`` with ``ActorPoolStrategy``), each actor
adding that task's embedding column, and writes the result to Parquet. With GPUs in the cluster
each actor asks for a fraction of one, so several task models share a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy
from torch_geometric.data import Batch

from tasksim_ray.config import EmbedConfig
from tasksim_ray.featurize import FeaturizeReport, featurize_many, graph_from_bytes, graph_to_bytes
from tasksim_ray.models import load_checkpoint
from tasksim_ray.runtime import cluster_cpus, cluster_gpus

PROBE_ID, GRAPH = "probe_id", "graph"


def emb_column(task: str) -> str:
    return f"emb__{task}"


def probe_table(smiles: list[str], ids: list[str]) -> tuple[pd.DataFrame, FeaturizeReport]:
    """Featurise probe SMILES once; invalid ones are reported and skipped."""
    graphs, report = featurize_many(smiles)
    keep = [i for i, g in enumerate(graphs) if g is not None]
    frame = pd.DataFrame({
        PROBE_ID: [ids[i] for i in keep],
        "smiles": [smiles[i] for i in keep],
        GRAPH: [graph_to_bytes(graphs[i]) for i in keep],
    })
    return frame, report


class TaskEmbedder:
    """Holds one task's model; called by Ray Data on batches of serialised probe graphs."""

    def __init__(self, model_dir: str, column: str, num_threads: int = 1) -> None:
        torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, _ = load_checkpoint(Path(model_dir), self.device)
        self.column = column

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graphs = Batch.from_data_list([graph_from_bytes(b) for b in batch[GRAPH]]).to(self.device)
        batch[self.column] = self.model.embed(graphs).float().cpu().numpy()
        return batch


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float


def actor_resources(cfg: EmbedConfig, n_tasks: int) -> ActorResources:
    """Fractional GPUs when the cluster has any; the CPU share is capped so that every task's
    actor pool starts at once (a chained pipeline needs all of them alive) and one CPU stays
    free for Ray Data's read and write tasks."""
    n_actors = n_tasks * cfg.actors_per_task
    share = min(cfg.num_cpus, max(cluster_cpus() - 1.0, 0.5) / n_actors)
    return ActorResources(num_cpus=share, num_gpus=cfg.gpu_fraction if cluster_gpus() > 0 else 0.0)


def embed_probes(probe_parquet: Path, model_dirs: dict[str, Path], cfg: EmbedConfig, out_dir: Path) -> None:
    """Stream the probe set through every task model and write ``probe_id`` + embeddings."""
    res = actor_resources(cfg, len(model_dirs))
    ds = ray.data.read_parquet(str(probe_parquet))
    for task, directory in model_dirs.items():
        ds = ds.map_batches(
            TaskEmbedder,
            fn_constructor_kwargs={"model_dir": str(directory), "column": emb_column(task)},
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=cfg.actors_per_task),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
        )
    ds.select_columns([PROBE_ID, *(emb_column(t) for t in model_dirs)]).write_parquet(str(out_dir))


def read_embeddings(directory: Path, tasks: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Probe ids (sorted) and one (n_probes, dim) matrix per task, from the Parquet written above."""
    table = pq.read_table(directory).to_pandas()
    table = table.sort_values(PROBE_ID, kind="stable").reset_index(drop=True)
    embs = {t: np.stack(table[emb_column(t)].to_numpy()).astype(np.float64) for t in tasks}
    return table[PROBE_ID].astype(str).tolist(), embs
