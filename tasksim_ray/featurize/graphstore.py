"""Graphs handed between stages: one packed store per artifact, or one blob per Arrow cell.

Molecule graphs carry ``x``, ``edge_index`` and ``edge_attr``; crystal graphs add per-atom ``z``
and ``pos`` and a per-crystal ``cell``. Every field is packed by what it indexes (atoms, edges or
the whole graph), so one format serves every input kind and stays ``weights_only``-loadable.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

NODE_FIELDS = ("x", "z", "pos")
EDGE_FIELDS = ("edge_index", "edge_attr")  # edge_index is (2, E): concatenated along dim 1
GRAPH_FIELDS = ("cell",)
FIELDS = NODE_FIELDS + EDGE_FIELDS + GRAPH_FIELDS


def _fields(g: Data) -> list[str]:
    present = [k for k in FIELDS if k in g]
    unknown = sorted(set(g.keys()) - set(FIELDS) - {"num_nodes"})
    if unknown:
        raise ValueError(f"graph fields {unknown} have no packing rule; known: {list(FIELDS)}")
    return present


def _cat_dim(key: str) -> int:
    return 1 if key == "edge_index" else 0


def pack_graphs(graphs: Sequence[Data]) -> dict[str, torch.Tensor]:
    """Concatenate graphs into flat tensors plus atom and edge offsets."""
    n_atoms = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    n_edges = torch.tensor([g.edge_index.shape[1] for g in graphs], dtype=torch.long)
    store = {"atom_ptr": torch.cat([torch.zeros(1, dtype=torch.long), n_atoms.cumsum(0)]),
             "edge_ptr": torch.cat([torch.zeros(1, dtype=torch.long), n_edges.cumsum(0)])}
    if graphs:
        for key in _fields(graphs[0]):
            store[key] = torch.cat([g[key] for g in graphs], _cat_dim(key))
    return store


def unpack_graphs(store: dict[str, torch.Tensor]) -> list[Data]:
    ap, ep = store["atom_ptr"].tolist(), store["edge_ptr"].tolist()
    out = []
    for i in range(len(ap) - 1):
        g = Data()
        for key in FIELDS:
            if key not in store:
                continue
            t = store[key]
            if key in NODE_FIELDS:
                g[key] = t[ap[i]:ap[i + 1]]
            elif key == "edge_index":
                g[key] = t[:, ep[i]:ep[i + 1]]
            elif key in EDGE_FIELDS:
                g[key] = t[ep[i]:ep[i + 1]]
            else:
                g[key] = t[i:i + 1]
        g.num_nodes = ap[i + 1] - ap[i]
        out.append(g)
    return out


def graph_to_bytes(g: Data) -> bytes:
    """One graph as bytes for a binary Arrow column: a JSON header (field, dtype, shape), then data."""
    arrays = {k: g[k].numpy() for k in _fields(g)}
    header = json.dumps({"n": int(g.num_nodes), "fields": [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]})
    head = header.encode()
    return struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())


def _arrays(buf: bytes) -> tuple[int, dict[str, np.ndarray]]:
    """A serialised graph's atom count and fields, as read-only views into ``buf``."""
    (n_head,) = struct.unpack_from("<I", buf)
    header = json.loads(buf[4:4 + n_head])
    off, arrays = 4 + n_head, {}
    for key, dtype, shape in header["fields"]:
        arr = np.frombuffer(buf, np.dtype(dtype), int(np.prod(shape)), off).reshape(shape)
        off += arr.nbytes
        arrays[key] = arr
    return header["n"], arrays


def graph_from_bytes(buf: bytes) -> Data:
    n, arrays = _arrays(buf)
    g = Data()
    for key, arr in arrays.items():
        g[key] = torch.from_numpy(arr.copy())
    g.num_nodes = n
    return g


def batch_from_bytes(bufs: Sequence[bytes]) -> Batch:
    """Serialised graphs straight into one batch, the tensors ``Batch.from_data_list`` would give
    (fields concatenated, edge indices offset by the atoms before them, ``batch`` and ``ptr``):
    one concatenation per field instead of a ``Data`` object per graph, which cost the embedding
    hosts four times more than the collation itself."""
    if not bufs:
        raise ValueError("no graphs to batch")
    counts, parts = np.empty(len(bufs), np.int64), {}
    for i, buf in enumerate(bufs):
        counts[i], arrays = _arrays(buf)
        for key, arr in arrays.items():
            parts.setdefault(key, []).append(arr)
    ptr = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
    fields = {k: torch.from_numpy(np.concatenate(v, axis=_cat_dim(k))) for k, v in parts.items()}
    if "edge_index" in fields:
        offsets = np.repeat(ptr[:-1], [a.shape[1] for a in parts["edge_index"]])
        fields["edge_index"] += torch.from_numpy(offsets).to(fields["edge_index"].dtype)
    batch = Batch(batch=torch.from_numpy(np.repeat(np.arange(len(bufs)), counts)), ptr=torch.from_numpy(ptr), **fields)
    batch.num_nodes = int(ptr[-1])
    batch._num_graphs = len(bufs)
    return batch
