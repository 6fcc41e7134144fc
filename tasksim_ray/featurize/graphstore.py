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
from torch_geometric.data import Data

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


def graph_from_bytes(buf: bytes) -> Data:
    (n_head,) = struct.unpack_from("<I", buf)
    header = json.loads(buf[4:4 + n_head])
    off = 4 + n_head
    g = Data()
    for key, dtype, shape in header["fields"]:
        count = int(np.prod(shape))
        arr = np.frombuffer(buf, np.dtype(dtype), count, off).reshape(shape)
        off += arr.nbytes
        g[key] = torch.from_numpy(arr.copy())
    g.num_nodes = header["n"]
    return g
