"""The one writer of trained-model folders: ``config.json`` + ``state_dict.pt`` + manifest.

Per-task pretraining, multi-task pretraining and Ray Train workers all write through
:func:`write_model_dir`, built in a scratch folder and renamed into place (``atomic_dir``), so a
folder that exists is a finished, loadable model, wherever it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tasksim_ray.infra.cache import atomic_dir, write_manifest
from tasksim_ray.models import TaskModelInfo, save_checkpoint


def write_model_dir(out_dir: Path, model: nn.Module, info: TaskModelInfo, stage: str,
                    history: list[dict[str, float]], **manifest: Any) -> None:
    """Write ``model`` (moved to CPU) with ``info`` and a manifest carrying its metrics and history."""
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp, model.cpu(), info)
        write_manifest(tmp, stage, out_dir.name, metrics=info.metrics, history=history, **manifest)
