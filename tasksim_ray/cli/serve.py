"""``tasksim serve CONFIG``: the run's task models as an HTTP embedding service (Ray Serve)."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer

from tasksim_ray.cli.app import ConfigArg, SetOpt, app, console, overrides, user_errors
from tasksim_ray.config import load_config


@app.command()
def serve(config: ConfigArg, sets: SetOpt = None,
          port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1")] = 8000,
          replicas: Annotated[int, typer.Option(help="replicas of the model host", min=1)] = 1) -> None:
    """Train (or reuse) the config's task models, then serve their embeddings on 127.0.0.1 until Ctrl-C:
    POST /embed {"task": NAME, "inputs": [SMILES or structure JSON, ...]} (at most serve.max_inputs
    inputs of serve.max_atoms atoms each)."""
    from tasksim_ray.data.tasks import TaskTable
    from tasksim_ray.embedding.serving import deploy
    from tasksim_ray.stages.pipeline import run_pipeline

    with user_errors():
        cfg = load_config(config, overrides(sets))
        result = run_pipeline(cfg, console, until="pretrain")
        tasks = result.tasks_stage  # None: published CGCNN checkpoints, which read crystals
        kind = "crystal" if tasks is None else TaskTable.in_folder(tasks.path).kind
        url = deploy(result.model_dirs, kind, cfg.data.graph, port=port, replicas=replicas,
                     num_cpus=cfg.embed.num_cpus, num_gpus=0.0, limits=cfg.serve)
    console.print(f"serving {len(result.model_dirs)} task models at [bold]{url}[/bold] (Ctrl-C stops)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a job manager's stop: shut down as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        from ray import serve as ray_serve

        ray_serve.shutdown()
        console.print("stopped")

