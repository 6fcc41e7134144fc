"""`tasksim serve`'s application on a real Ray Serve, queried over HTTP on 127.0.0.1: the vectors are
the model's own, an unknown task is a 404 with a one-line message, a bad SMILES is reported per item."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

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


def _send(url: str, data: bytes, method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, DMPNN]]]:
    """Two task models on one replica, with small request limits (4 inputs, 40 atoms each)."""
    from ray import serve

    from tasksim_ray.config import ServeConfig
    from tasksim_ray.embedding.serving import deploy

    tmp_path = tmp_path_factory.mktemp("serve")
    models = {}
    for i, task in enumerate(["mu", "alpha"]):
        torch.manual_seed(i)
        models[task] = DMPNN(**HP).eval()
        save_checkpoint(tmp_path / task, models[task], TaskModelInfo("dmpnn", HP, task, "", 0.0, 1.0))
    url = deploy({t: tmp_path / t for t in models}, port=_free_port(), num_cpus=0.5,
                 limits=ServeConfig(max_inputs=4, max_atoms=40))
    yield url, models
    serve.shutdown()


def test_served_embeddings_over_http(served: tuple[str, dict[str, DMPNN]]) -> None:
    url, models = served
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
    served_rows = np.array([got["embeddings"][0], got["embeddings"][2]], dtype=np.float32)
    assert np.array_equal(served_rows, want.numpy())

    status, got = _post(url, {"task": "nope", "inputs": ["CCO"]})
    assert status == 404 and "unknown task 'nope'" in got["error"] and "\n" not in got["error"]
    status, got = _post(url, {"inputs": ["CCO"]})
    assert status == 400 and "task" in got["error"]
    status, got = _post(url, {"task": "mu", "inputs": ["CCO"]})  # the other model, same replica
    assert status == 200 and len(got["embeddings"][0]) == 16


# every malformed body: its status and what the one-line error names
MALFORMED: dict[str, tuple[bytes, int, str]] = {
    "task-a-list": (b'{"task": ["mu"], "inputs": ["CCO"]}', 400, "key 'task': Input should be a valid string"),
    "task-a-number": (b'{"task": 3, "inputs": ["CCO"]}', 400, "key 'task'"),
    "task-empty": (b'{"task": "", "inputs": ["CCO"]}', 400, "key 'task'"),
    "layer-a-number": (b'{"task": "mu", "inputs": ["CCO"], "layer": 2}', 400, "key 'layer'"),
    "layer-unknown": (b'{"task": "mu", "inputs": ["CCO"], "layer": "bogus"}', 400, "layer 'bogus'"),
    "layer-node": (b'{"task": "mu", "inputs": ["CCO"], "layer": "node"}', 400, "not served (atom level)"),
    "inputs-missing": (b'{"task": "mu"}', 400, "key 'inputs': Field required"),
    "inputs-a-string": (b'{"task": "mu", "inputs": "CCO"}', 400, "key 'inputs'"),
    "inputs-empty": (b'{"task": "mu", "inputs": []}', 400, "key 'inputs'"),
    "input-a-number": (b'{"task": "mu", "inputs": ["CCO", 5]}', 400, "key 'inputs.1'"),
    "input-null": (b'{"task": "mu", "inputs": [null]}', 400, "key 'inputs.0'"),
    "unknown-key": (b'{"task": "mu", "inputs": ["CCO"], "batch": 2}', 400, "unknown key 'batch'"),
    "body-a-list": (b'[{"task": "mu"}]', 400, "bad request"),
    "body-not-json": (b"task=mu", 400, "body is not JSON"),
    "body-empty": (b"", 400, "body is not JSON"),
    "body-not-utf8": (b'{"task": "\xff"}', 400, "bad request"),
    "too-many-inputs": (json.dumps({"task": "mu", "inputs": ["C"] * 5}).encode(), 413, "serve.max_inputs is 4"),
    "too-many-atoms": (json.dumps({"task": "mu", "inputs": ["CCO", "C" * 41]}).encode(), 413,
                       "input 1 has 41 atoms; serve.max_atoms is 40"),
    "huge-input": (json.dumps({"task": "mu", "inputs": ["C" * 1000]}).encode(), 413, "input 0 has 1,000 characters"),
    "huge-body": (json.dumps({"task": "mu", "inputs": ["C" * 30] * 5000}).encode(), 413, "request body of"),
}


def test_every_malformed_request_is_a_4xx_with_one_line(served: tuple[str, dict[str, DMPNN]]) -> None:
    url, _ = served
    for name, (body, want, says) in MALFORMED.items():
        status, got = _send(url, body)
        assert status == want and says in got["error"] and "\n" not in got["error"], (name, status, got)
    status, got = _send(url, b'{"task": "mu", "inputs": ["CCO"]}', method="PUT")
    assert status == 405 and "PUT" in got["error"]
    status, got = _post(url, {"task": "mu", "inputs": ["C" * 40, "[13CH3]C1CCCCC1[NH3+]"]})  # within the limits
    assert status == 200 and all(v is not None for v in got["embeddings"]), got
