"""`tasksim serve`'s application on a real Ray Serve, queried over HTTP on 127.0.0.1: the vectors are
the model's own, an unknown task is a 404 with a one-line message, a bad SMILES is reported per item."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.models import TaskModelInfo, save_checkpoint
from tasksim_ray.models.dmpnn import DMPNN

pytestmark = pytest.mark.ray
HP = {"hidden_dim": 16, "ffn_hidden_dim": 8, "depth": 2}


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_embeddings_over_http(ray_local: None, tmp_path: Path) -> None:
    from ray import serve

    from tasksim_ray.embedding.serving import deploy

    models = {}
    for i, task in enumerate(["mu", "alpha"]):
        torch.manual_seed(i)
        models[task] = DMPNN(**HP).eval()
        save_checkpoint(tmp_path / task, models[task], TaskModelInfo("dmpnn", HP, task, "", 0.0, 1.0))
    url = deploy({t: tmp_path / t for t in models}, port=_free_port(), num_cpus=0.5)
    try:
        smiles = ["CCO", "not a smiles", "c1ccccc1O"]
        status, got = _post(url, {"task": "alpha", "inputs": smiles})
        assert status == 200 and got["dim"] == 16
        assert got["embeddings"][1] is None and "not a smiles" in got["errors"][1]
        assert got["errors"][0] is None and got["errors"][2] is None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the replica: the same reduction order, so the same bits
        with torch.no_grad():
            want = models["alpha"].embed(Batch.from_data_list([smiles_to_graph(s) for s in ("CCO", "c1ccccc1O")]))
        torch.set_num_threads(threads)
        served = np.array([got["embeddings"][0], got["embeddings"][2]], dtype=np.float32)
        assert np.array_equal(served, want.numpy())

        status, got = _post(url, {"task": "nope", "inputs": ["CCO"]})
        assert status == 404 and "unknown task 'nope'" in got["error"] and "\n" not in got["error"]
        status, got = _post(url, {"inputs": ["CCO"]})
        assert status == 400 and "task" in got["error"]
        status, got = _post(url, {"task": "mu", "inputs": ["CCO"]})  # the other model, same replica
        assert status == 200 and len(got["embeddings"][0]) == 16
    finally:
        serve.shutdown()
