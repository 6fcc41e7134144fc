"""Prototype embedding-pipeline settings, timed by ``embed_throughput.py --variants``.

Each one is ``tasksim_ray.embedding.service.embed_table`` with one thing changed, to measure what the real
pipeline would gain from it; nothing here is used by tasksim_ray itself.

* ``v2``/``v1``: ``read_parquet`` (V2 = Ray Data's default DataSourceV2 reader, which starts a
  pool of FooterReader actors on every call; V1 = the older reader), then ``repartition`` to one
  block per batch: a single-file probe Parquet reads as ONE block whatever
  ``override_num_blocks`` says, so the chained actor pools run one after another instead of
  as a pipeline;
* ``arrow``: the probe table read in the driver and handed over as one block per batch
  (``from_arrow``): no read tasks at all;
* ``fused``: one actor pool whose actors each hold every task model, so each batch is
  deserialised and collated once and torch is imported once per actor, not once per task.

The per-actor CPU share follows ``actor_resources``: (CPUs - 1) / n_actors. Asking for more
(e.g. 0.5 CPU for each of 4 actors on 2 CPUs) leaves no CPU for the read and write tasks and
the chained pipeline hangs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from torch_geometric.data import Batch

from tasksim_ray.embedding.service import GRAPH, ID, TaskEmbedder, emb_column
from tasksim_ray.featurize.graphstore import graph_from_bytes
from tasksim_ray.models import load_checkpoint


class FusedEmbedder:
    """Prototype: one actor holds every task model and collates each batch once."""

    def __init__(self, model_dirs: dict[str, str], num_threads: int = 1) -> None:
        torch.set_num_threads(num_threads)
        self.models = {t: load_checkpoint(Path(d))[0] for t, d in model_dirs.items()}

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graphs = Batch.from_data_list([graph_from_bytes(b) for b in batch[GRAPH]])
        out = {ID: batch[ID]}
        for t, model in self.models.items():
            out[emb_column(t)] = model.embed(graphs).float().numpy()
        return out


def variant_source(parquet: Path, batch: int, source: str) -> ray.data.Dataset:
    """The probe Dataset: ``v2`` = read_parquet as embed_table does; ``v1`` = the V1 Parquet
    reader; ``arrow`` = read in the driver, one block per batch (no read tasks at all). v1/v2
    are repartitioned to one block per batch."""
    n_blocks = -(-pq.ParquetFile(parquet).metadata.num_rows // batch)
    if source == "arrow":
        table = pq.read_table(parquet)
        return ray.data.from_arrow([table.slice(i, batch) for i in range(0, table.num_rows, batch)])
    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = source == "v2"
    return ray.data.read_parquet(str(parquet)).repartition(n_blocks)


def run_variant(parquet: Path, dirs: dict[str, Path], batch: int, out: Path, *, source: str = "v2",
                fused: int = 0, threads: int = 1) -> None:
    """Prototype of embed_table: another probe source (see variant_source), or a fused pool of
    ``fused`` actors each holding every model (each batch collated once, one torch import)."""
    ctx = ray.data.DataContext.get_current()
    v2 = ctx.use_datasource_v2
    try:
        ds = variant_source(parquet, batch, source)
        n_act = fused or len(dirs)
        cpus = (ray.cluster_resources()["CPU"] - 1) / n_act  # as actor_resources: 1 CPU kept free
        if fused:
            ds = ds.map_batches(FusedEmbedder, fn_constructor_kwargs={
                "model_dirs": {t: str(d) for t, d in dirs.items()}, "num_threads": threads},
                batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=fused),
                num_cpus=cpus)
        else:
            for t, d in dirs.items():
                ds = ds.map_batches(TaskEmbedder, fn_constructor_kwargs={"model_dir": str(d), "column": emb_column(t)},
                                    batch_size=batch, batch_format="numpy",
                                    compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus)
        ds.select_columns([ID, *(emb_column(t) for t in dirs)]).write_parquet(str(out))
    finally:
        ctx.use_datasource_v2 = v2


VARIANTS: dict[str, dict[str, Any]] = {
    "v2 read + repartition": {"source": "v2"},
    "v1 read + repartition": {"source": "v1"},
    "from_arrow, block/batch": {"source": "arrow"},
    "fused x1 2thr, from_arrow": {"source": "arrow", "fused": 1, "threads": 2},
    "fused x2 1thr, from_arrow": {"source": "arrow", "fused": 2, "threads": 1},
}
