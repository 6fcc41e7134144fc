"""Ready-made models: published checkpoints as task models, and foundation models shipped inside a
package (CHGNet's universal model). Each is written once into the model-folder format, then served
by the embedding service like any model this pipeline trained."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import file_fingerprint
from tasksim_ray.models import TaskModelInfo, build_model, save_checkpoint
from tasksim_ray.registry import FOUNDATION_MODELS
from tasksim_ray.stages import Run
from tasksim_ray.training.pretrain import PretrainedModel


def stage_published(run: Run) -> dict[str, PretrainedModel]:
    """One model folder per published checkpoint (``published.tasks`` picks a subset)."""
    from tasksim_ray.models.published import SUFFIX, import_published

    cfg = run.cfg.published
    src = Path(cfg.path or "")
    if not src.is_dir():
        raise TasksimError(f"published.path {src}: folder not found")

    def build(out: Path) -> dict[str, Any]:
        dirs = import_published(src, out / "models")
        return {"tasks": list(dirs)}

    files = [file_fingerprint(f) for f in sorted(src.glob(f"*{SUFFIX}"))]
    stage = run.stage("published-models", [str(src.resolve()), files], build)
    names = stage.manifest["tasks"]
    wanted = cfg.tasks or names
    unknown = [t for t in wanted if t not in names]
    if unknown:
        raise TasksimError(f"published.tasks: unknown task(s) {unknown}; the checkpoints are {names}")
    models = {}
    for t in wanted:
        directory = stage.path / "models" / t
        info = json.loads((directory / "config.json").read_text())
        models[t] = PretrainedModel(t, directory, {"units": info["units"], **info["metrics"]})
    return models


def stage_foundation_model(run: Run, name: str) -> Path:
    """The model folder of a shipped foundation model (its weights come from the installed package)."""
    spec = FOUNDATION_MODELS.get(name)
    backbone, hparams = spec.backbone, spec.hparams
    # the folder's name is what transfer cells key a source by: name and package version, so new
    # weights from an upgraded package never reuse cells fine-tuned from the old ones
    folder = f"{name}-{version(spec.package)}"

    def build(out: Path) -> dict[str, Any]:
        model = build_model(backbone, hparams)
        save_checkpoint(out / folder, model, TaskModelInfo(backbone, hparams, name, "", 0.0, 1.0))
        return {"backbone": backbone, "package_version": version(spec.package)}

    return run.stage("foundation-model", [name, backbone, hparams, version(spec.package), folder], build).path / folder
