"""Figures: matplotlib without a display, and PNGs written atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

from tasksim_ray.infra.cache import umask_mode, writing

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` so a crashed run never leaves half an image, then close it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        umask_mode(tmp)
        with writing(path):
            fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half image left behind
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
