"""Where training and embedding run: one rule for every caller."""

from __future__ import annotations

from collections.abc import Sequence

import ray
import torch


def choose_device(gpu_ids: Sequence[int | str] | None = None) -> torch.device:
    """CUDA when this process was given GPUs and torch sees one, else CPU. ``gpu_ids`` defaults to
    what Ray reserved for this worker (none outside Ray), so a task that asked for no GPU never
    takes one it may share with tasks that did."""
    if gpu_ids is None:
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    return torch.device("cuda" if len(gpu_ids) > 0 and torch.cuda.is_available() else "cpu")
