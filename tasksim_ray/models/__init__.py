"""Building backbones by registered name, and the checkpoint format: a folder with ``config.json`` +
``state_dict.pt``. ``config.json`` records the folder format (``FORMAT_VERSION``) and the backbone
class's ``VERSION`` (bumped when a change to it makes old weights mean something else); both are
checked on load, with a one-line message on a mismatch, and both enter the cache keys of models.

A new backbone is one module and one line in ``tasksim_ray.registry.BACKBONES`` (or, from user
code, ``BACKBONES.register(name, cls)``; no library edit). The interface everything downstream
uses: ``embed(batch, layer)`` (graph-level features), ``head`` (features -> predictions),
``reset_head(n_outputs)`` (a new head for a new target), ``ENCODER_LAYERS`` (the encoder's layer
groups, input to output, for fine-tuning strategies) and ``embedding_dim``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import MANIFEST, intact, is_complete, save_torch, write_json_atomic
from tasksim_ray.registry import BACKBONES

__all__ = ["BACKBONES", "FORMAT_VERSION", "TaskModelInfo", "backbone_version", "build_model", "load_checkpoint",
           "save_checkpoint"]

FORMAT_VERSION = 2  # 1: folders written before the versions were recorded (same layout, still read)


# constructor arguments that read a file when a model is first built (a foundation model's weights, and
# the permission to unpickle it). A saved model's weights are all in its state dict, so a model folder
# is rebuilt without them: trust comes from the user's run config, never from an artifact's config.json.
BUILD_ONLY_HPARAMS = ("foundation_file", "trust_pickle")


@dataclass
class TaskModelInfo:
    """What a checkpoint knows about itself: enough to rebuild it and undo target scaling."""

    backbone: str
    hparams: dict[str, Any]
    task: str
    units: str
    target_mean: float | list[float]  # a list for a multi-task model, one entry per task
    target_std: float | list[float]  # of the labels after ``label_transform``: prediction * std + mean, then inverted
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    backbone_version: int = 1
    label_transform: dict[str, Any] | None = None  # ``data.transforms.LabelTransform.to_dict()``; None: identity


def backbone_version(backbone: str) -> int:
    """The registered backbone class's ``VERSION`` (1 when it declares none)."""
    return int(getattr(BACKBONES.get(backbone), "VERSION", 1))


def _check_versions(directory: Path, info: TaskModelInfo) -> None:
    if info.format_version > FORMAT_VERSION:
        raise TasksimError(f"model folder {directory}: format version {info.format_version} is newer than this "
                           f"tasksim_ray reads ({FORMAT_VERSION}); upgrade tasksim_ray")
    code = backbone_version(info.backbone)
    if info.backbone_version != code:
        raise TasksimError(f"model folder {directory}: written by {info.backbone} version {info.backbone_version}, "
                           f"this code is version {code}; retrain it (rerun the stage) or use the matching release")


def build_model(backbone: str, hparams: dict[str, Any]) -> nn.Module:
    """The registered backbone's class, imported on first use (so chgnet loads only when named)."""
    return BACKBONES.get(backbone)(**hparams)


def save_checkpoint(directory: Path, model: nn.Module, info: TaskModelInfo) -> None:
    """``config.json`` + ``state_dict.pt``. A model whose architecture came from a build-only file (a
    MACE foundation model) lists it in ``hparams_from_file``; those join the hparams, so the folder
    rebuilds without that file."""
    directory.mkdir(parents=True, exist_ok=True)
    info = replace(info, hparams=info.hparams | getattr(model, "hparams_from_file", {}), format_version=FORMAT_VERSION,
                   backbone_version=backbone_version(info.backbone))
    write_json_atomic(directory / "config.json", asdict(info))
    save_torch(model.state_dict(), directory / "state_dict.pt")


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TaskModelInfo]:
    """Load a model folder. A damaged one is a one-line error naming it, never a torch traceback (the
    pipeline checks cached folders before it starts jobs, and rebuilds damaged ones)."""
    if not (directory / "config.json").is_file():
        is_complete(directory)  # trained on another node: fetch it from the shared store, if there
    elif (directory / MANIFEST).is_file() and not intact(directory):
        raise TasksimError(f"model folder {directory} is damaged (files differ from its manifest); rerun to rebuild")
    try:
        info = TaskModelInfo(**json.loads((directory / "config.json").read_text()))
        _check_versions(directory, info)
        model = build_model(info.backbone, {k: v for k, v in info.hparams.items() if k not in BUILD_ONLY_HPARAMS})
        state = torch.load(directory / "state_dict.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise TasksimError(f"model folder {directory} cannot be loaded: {type(exc).__name__}: {first}") from None
    return model.to(device).eval(), info
