"""The embedding service: task models held by warm model hosts (``hosts.py``), inputs streamed by
Ray Data.

Molecules and crystals are featurised once into a binary graph column; Ray Data streams the table in
batches to the hosts, each batch is embedded by every model asked for, and the result is written
as Parquet. With GPUs each host asks for a fraction of one, so several hosts share a device.
Graph-level layers give one vector per input; ``node`` gives each input's per-atom vectors (stored as
float32 bytes + atom count).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from tasksim_ray.config import CrystalGraphConfig, EmbedConfig
from tasksim_ray.data.tasks import INPUT_COLUMNS
from tasksim_ray.embedding.hosts import HostGroup, is_node_layer
from tasksim_ray.featurize.graphstore import graph_to_bytes
from tasksim_ray.featurize.inputs import featurize_inputs
from tasksim_ray.infra.cache import writing
from tasksim_ray.featurize.molecule import FeaturizeReport

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


def _batches(table: Path, batch_size: int, ids: list[str], seconds: dict[str, float]) -> Iterator[list[bytes]]:
    """The table's graphs in consecutive batches of ``batch_size``, streamed by Ray Data from the
    Parquet read here (a probe table fits in memory; no read task to schedule). The batch boundaries
    do not depend on the block layout, so the embeddings are the same bytes. ``seconds["read"]``
    adds up the driver's time in here."""
    start = time.perf_counter()
    ds = ray.data.from_arrow(pq.read_table(table, columns=[ID, GRAPH]))
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        ids += batch.column(ID).to_pylist()
        graphs = batch.column(GRAPH).to_pylist()
        seconds["read"] += time.perf_counter() - start
        yield graphs
        start = time.perf_counter()


def _column(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(list(values), type=pa.binary())
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def embed_table(table: Path, model_dirs: dict[str, Path], cfg: EmbedConfig, out_dir: Path, layer: str = "graph",
                hosts: HostGroup | None = None, timings: dict[str, Any] | None = None) -> None:
    """Stream an (id, graph) Parquet table through every model on the model hosts (``hosts``, or a
    group started for this call) and write ``id`` + one embedding column per model as Parquet, a
    row group per batch as the batches come back. ``timings``, when given, receives where the wall
    time went (until the first batch is back, i.e. host start-up and reading; all batches; the
    driver's reading and writing), the hosts' own split (loading models, decoding, forward) and,
    if this call started them, when their processes ran, finished importing and were ready."""
    clock = time.perf_counter()
    group = hosts or HostGroup(cfg, len(model_dirs))
    fresh = group.calls == 0
    out_dir.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    seconds = {"read": 0.0, "write": 0.0}
    try:
        ids: list[str] = []
        done = 0
        models = {name: str(Path(d).resolve()) for name, d in model_dirs.items()}
        for part in group.map(_batches(table, cfg.batch_size, ids, seconds), models, layer):
            start = time.perf_counter()
            n = len(next(iter(part.values())))
            batch = pa.table({ID: pa.array(ids[done:done + n])} | {emb_column(k): _column(v) for k, v in part.items()})
            done += n
            if writer is None:
                if timings is not None:  # host start-up (unless warm), reading, one batch
                    timings["first_batch_s"] = start - clock
                # dictionary-encoding float vectors only wastes the driver's CPU (5 s of 24 at
                # 20,000 x 10, taken from the hosts' cores): ids only
                writer = pq.ParquetWriter(out_dir / "part-0.parquet", batch.schema, use_dictionary=[ID])
            with writing(out_dir / "part-0.parquet"):
                writer.write_table(batch)
            seconds["write"] += time.perf_counter() - start
        if timings is not None:
            timings["stream_s"] = time.perf_counter() - clock
            timings |= {f"driver_{k}_s": v for k, v in seconds.items()}
            timings["hosts"] = group.stats()
            if fresh and timings["hosts"]:  # this call started the hosts: how long their processes and imports took
                timings["host_startup"] = group.startup(timings["hosts"])
            timings["host_seconds"] = {k: round(sum(h["seconds"][k] for h in timings["hosts"]), 3)
                                       for k in (timings["hosts"][0]["seconds"] if timings["hosts"] else {})}
    finally:
        if writer is not None:
            writer.close()
        if hosts is None:
            group.close()


def read_embedded(directory: Path, names: list[str], layer: str = "graph") -> tuple[list[str], dict[str, np.ndarray | list[np.ndarray]]]:
    """Ids (sorted) and, per model, an (n, dim) matrix, or per-molecule (n_atoms, dim) arrays for ``node``."""
    frame = pq.read_table(directory).to_pandas().sort_values(ID, kind="stable").reset_index(drop=True)
    out: dict[str, np.ndarray | list[np.ndarray]] = {}
    for name in names:
        col = frame[emb_column(name)]
        if is_node_layer(layer):
            counts = frame[f"{emb_column(name)}__n"].to_numpy()
            out[name] = [np.frombuffer(b, np.float32).reshape(n, -1) for b, n in zip(col, counts)]
        else:
            out[name] = np.stack(col.to_numpy()).astype(np.float32)
    return frame[ID].astype(str).tolist(), out


def save_embedding(path: Path, ids: list[str], emb: np.ndarray) -> None:
    """One task's embeddings as Parquet: ``id`` and a fixed-size float32 ``embedding`` list."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    table = pa.table({ID: pa.array(ids), "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})
    with writing(path):
        pq.write_table(table, path)


def load_embedding(path: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path)
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy().reshape(len(table), col.type.list_size)
    return table.column(ID).to_pylist(), emb
