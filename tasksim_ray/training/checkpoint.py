"""The one writer of trained-model folders: ``config.json`` + ``state_dict.pt`` + manifest.

Per-task pretraining, multi-task pretraining and Ray Train workers all write through
:func:`write_model_dir`, an artifact of the store (built in a scratch folder, renamed into place),
so a folder that exists is a finished, loadable model, wherever it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tasksim_ray.infra.cache import Artifacts
from tasksim_ray.models import TaskModelInfo, save_checkpoint


def write_model_dir(out_dir: Path, model: nn.Module, info: TaskModelInfo, stage: str,
                    history: list[dict[str, float]], **manifest: Any) -> None:
    """Write ``model`` (moved to CPU) with ``info`` and a manifest carrying its metrics and history."""
    with Artifacts(out_dir.parent, stage).build(out_dir.name, metrics=info.metrics, history=history, **manifest) as tmp:
        save_checkpoint(tmp, model.cpu(), info)
