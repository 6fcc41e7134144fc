"""Embeddings over HTTP: the model host as a Ray Serve application with model multiplexing.

A notebook or another job posts inputs with a task name and gets that task model's embeddings:

    POST /embed  {"task": "mu", "inputs": ["CCO", "c1ccccc1"], "layer": "graph"}
    ->  {"task": "mu", "layer": "graph", "dim": 300, "embeddings": [[...], [...]], "errors": [null, null]}

Each replica keeps the task models it was last asked for (``serve.multiplexed``), and requests that
name a task in the ``serve_multiplexed_model_id`` header are routed to a replica that has it. An
input that cannot be featurised (a bad SMILES or structure) gets ``null`` and its error, the rest
are embedded; an unknown task is a 404 with a one-line message. The HTTP proxy listens on
127.0.0.1 only: reach it from elsewhere through an SSH tunnel, as the dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse
from torch import nn
from torch_geometric.data import Batch, Data

from tasksim_ray.config import CrystalGraphConfig
from tasksim_ray.embedding.hosts import ModelHost, embed_batch, is_node_layer
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.inputs import featurize_inputs

APP_NAME = "tasksim-embeddings"


def featurize_items(kind: str, inputs: list[str], graph: CrystalGraphConfig | None) -> list[Data | str]:
    """Each input's graph, or the reason it has none (reported per item, never failing the batch)."""
    if kind == "molecule":
        graphs, _ = featurize_inputs(kind, inputs, "request")
        return [g if g is not None else f"invalid SMILES {s!r}" for g, s in zip(graphs, inputs)]
    out: list[Data | str] = []
    for i, text in enumerate(inputs):
        try:
            out.append(featurize_inputs(kind, [text], "request", [str(i)], graph)[0][0])
        except (TasksimError, ValueError, KeyError) as exc:
            out.append(str(exc).splitlines()[0])
    return out


@serve.deployment
class EmbeddingServer:
    """Serves ``models`` (task name -> model folder) for inputs of one ``kind``."""

    def __init__(self, models: dict[str, str], kind: str = "molecule", graph: dict[str, Any] | None = None,
                 budget_bytes: int = 2 << 30) -> None:
        self.dirs = models
        self.kind = kind
        self.graph = CrystalGraphConfig(**graph) if graph else None
        self.host = ModelHost(budget_bytes)

    @serve.multiplexed(max_num_models_per_replica=16)
    async def get_model(self, task: str) -> nn.Module:
        return self.host.model(self.dirs[task])

    def tasks(self) -> list[str]:
        return sorted(self.dirs)

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"tasks": self.tasks(), "kind": self.kind})
        try:
            body = await request.json()
            task, inputs, layer = body["task"], body["inputs"], body.get("layer", "graph")
            if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
                raise TypeError("'inputs' must be a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad request: {type(exc).__name__}: {exc}"}, status_code=400)
        if task not in self.dirs:
            return JSONResponse({"error": f"unknown task {task!r}; tasks: {self.tasks()}"}, status_code=404)
        if is_node_layer(layer):
            return JSONResponse({"error": f"layer {layer!r} is not served (atom level); ask for 'graph' or a named layer"},
                                status_code=400)
        model = await self.get_model(task)
        items = featurize_items(self.kind, inputs, self.graph)
        good = [i for i, g in enumerate(items) if not isinstance(g, str)]
        vectors: list[Any] = [None] * len(items)
        if good:
            batch = Batch.from_data_list([items[i] for i in good]).to(self.host.device)
            try:
                emb = embed_batch(model, batch, layer, task)[task]
            except (TasksimError, KeyError, ValueError, TypeError) as exc:
                return JSONResponse({"error": f"layer {layer!r}: {str(exc).splitlines()[0]}"}, status_code=400)
            for i, row in zip(good, emb.tolist()):
                vectors[i] = row
        dim = len(next((v for v in vectors if v is not None), []))
        errors = [g if isinstance(g, str) else None for g in items]
        return JSONResponse({"task": task, "layer": layer, "dim": dim, "embeddings": vectors, "errors": errors})


def deploy(models: dict[str, Path], kind: str = "molecule", graph: CrystalGraphConfig | None = None,
           port: int = 8000, replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0) -> str:
    """Start the application on this Ray (HTTP on 127.0.0.1:``port``); returns its URL."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = EmbeddingServer.options(num_replicas=replicas,
                                  ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus}).bind(
        {t: str(Path(d).resolve()) for t, d in models.items()}, kind, graph.model_dump() if graph else None)
    serve.run(app, name=APP_NAME, route_prefix="/embed")
    return f"http://127.0.0.1:{port}/embed"
