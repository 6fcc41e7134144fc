"""Embeddings over HTTP: the model host as a Ray Serve application with model multiplexing.

A notebook or another job posts inputs with a task name and gets that task model's embeddings:

    POST /embed  {"task": "mu", "inputs": ["CCO", "c1ccccc1"], "layer": "graph"}
    ->  {"task": "mu", "layer": "graph", "dim": 300, "embeddings": [[...], [...]], "errors": [null, null]}

Each replica keeps the task models it was last asked for (``serve.multiplexed``), and requests that
name a task in the ``serve_multiplexed_model_id`` header are routed to a replica that has it. An
input that cannot be featurised (a bad SMILES or structure) gets ``null`` and its error, the rest
are embedded. Every malformed body is a 4xx with a one-line message: 400 for a body that is not the
schema below (types, empty values, unknown keys), 404 for an unknown task, 413 past the config's
``serve.max_inputs`` inputs or ``serve.max_atoms`` atoms per input. The HTTP proxy listens on
127.0.0.1 only: reach it from elsewhere through an SSH tunnel, as the dashboard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, StrictStr, ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse
from torch import nn
from torch_geometric.data import Batch, Data

from tasksim_ray.config import CrystalGraphConfig, ServeConfig
from tasksim_ray.config.base import Strict, first_error
from tasksim_ray.embedding.hosts import ModelHost, embed_batch, is_node_layer
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.inputs import CHARS_PER_ATOM, featurize_inputs, too_large
from tasksim_ray.infra import resources

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


class EmbedRequest(Strict):
    """The body of POST /embed: anything else (another type, an unknown key, an empty list) is a 400."""

    task: StrictStr = Field(min_length=1, max_length=200)
    inputs: list[StrictStr] = Field(min_length=1)
    layer: StrictStr = Field(default="graph", min_length=1, max_length=100)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment
class EmbeddingServer:
    """Serves ``models`` (task name -> model folder) for inputs of one ``kind``; ``limits`` (the
    config's ``serve`` section) bound what one request may ask."""

    def __init__(self, models: dict[str, str], kind: str = "molecule", graph: dict[str, Any] | None = None,
                 budget_bytes: int = 2 << 30, limits: dict[str, int] | None = None) -> None:
        self.dirs = models
        self.kind = kind
        self.graph = CrystalGraphConfig(**graph) if graph else None
        self.limits = ServeConfig(**(limits or {}))
        self.host = ModelHost(budget_bytes)

    @serve.multiplexed(max_num_models_per_replica=16)
    async def get_model(self, task: str) -> nn.Module:
        return self.host.model(self.dirs[task])

    def tasks(self) -> list[str]:
        return sorted(self.dirs)

    async def parse(self, request: Request) -> EmbedRequest | JSONResponse:
        """The validated request, or the 4xx response that says (in one line) what is wrong with it."""
        lim = self.limits
        most_bytes = lim.max_inputs * (lim.max_atoms * CHARS_PER_ATOM[self.kind] + 16) + 4096
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > most_bytes:
            return _error(413, f"request body of {int(size):,} bytes is larger than serve.max_inputs "
                               f"({lim.max_inputs}) inputs of serve.max_atoms ({lim.max_atoms}) atoms can be")
        try:
            body = EmbedRequest.model_validate(json.loads(await request.body()))
        except (ValueError, UnicodeDecodeError) as exc:
            why = first_error(exc) if isinstance(exc, ValidationError) else f"body is not JSON ({exc})"
            return _error(400, f"bad request: {why.splitlines()[0]}")
        if len(body.inputs) > lim.max_inputs:
            return _error(413, f"{len(body.inputs)} inputs in one request; serve.max_inputs is {lim.max_inputs}")
        for i, text in enumerate(body.inputs):
            if (why := too_large(self.kind, text, lim.max_atoms)) is not None:
                return _error(413, f"input {i} has {why}; serve.max_atoms is {lim.max_atoms}")
        if body.task not in self.dirs:
            return _error(404, f"unknown task {body.task!r}; tasks: {self.tasks()}")
        if is_node_layer(body.layer):
            return _error(400, f"layer {body.layer!r} is not served (atom level); ask for 'graph' or a named layer")
        return body

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"tasks": self.tasks(), "kind": self.kind})
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed; GET lists the tasks, POST embeds")
        body = await self.parse(request)
        if isinstance(body, JSONResponse):
            return body
        task, layer = body.task, body.layer
        model = await self.get_model(task)
        items = featurize_items(self.kind, body.inputs, self.graph)
        good = [i for i, g in enumerate(items) if not isinstance(g, str)]
        vectors: list[Any] = [None] * len(items)
        if good:
            batch = Batch.from_data_list([items[i] for i in good]).to(self.host.device)
            try:
                emb = embed_batch(model, batch, layer, task)[task]
            except (TasksimError, KeyError, ValueError, TypeError) as exc:
                return _error(400, f"layer {layer!r}: {str(exc).splitlines()[0]}")
            for i, row in zip(good, emb.tolist()):
                vectors[i] = row
        dim = len(next((v for v in vectors if v is not None), []))
        errors = [g if isinstance(g, str) else None for g in items]
        return JSONResponse({"task": task, "layer": layer, "dim": dim, "embeddings": vectors, "errors": errors})


def deploy(models: dict[str, Path], kind: str = "molecule", graph: CrystalGraphConfig | None = None,
           port: int = 8000, replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
           limits: ServeConfig | None = None) -> str:
    """Start the application on this Ray (HTTP on 127.0.0.1:``port``); returns its URL. Each
    replica's resources are checked first: one no node can run would leave Serve waiting for ever."""
    replica = resources.Request("each serve replica", {"CPU": num_cpus, "GPU": num_gpus},
                                {"CPU": f"embed.num_cpus {num_cpus:g}", "GPU": f"GPU {num_gpus:g}"})
    resources.check([replica])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = EmbeddingServer.options(num_replicas=replicas,
                                  ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus}).bind(
        {t: str(Path(d).resolve()) for t, d in models.items()}, kind, graph.model_dump() if graph else None,
        limits=(limits or ServeConfig()).model_dump())
    serve.run(app, name=APP_NAME, route_prefix="/embed")
    return f"http://127.0.0.1:{port}/embed"
