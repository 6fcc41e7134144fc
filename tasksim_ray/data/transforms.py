"""Label transforms as config: ``standardise``, ``min-max``, ``log``, ``log1p``, composed left to right.

A transform is fitted on the training split only (so nothing of the validation or test labels leaks
into it), kept as plain JSON (:meth:`LabelTransform.to_dict`, stored beside whatever used it) and
inverted for reporting. A paper that reports errors on transformed labels (paper 004: standardised,
then min-max normalised) is met by the same transform: for an affine chain, an MAE in task units
times :meth:`LabelTransform.mae_scale` is the MAE in the paper's units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tasksim_ray.errors import TasksimError

Step = Literal["standardise", "min-max", "log", "log1p"]
STEPS: tuple[str, ...] = ("standardise", "min-max", "log", "log1p")
AFFINE = ("standardise", "min-max")


@dataclass(frozen=True)
class Fitted:
    """One step with what it learned from the training labels: y -> (y - shift) / scale (affine steps)."""

    step: str
    shift: float = 0.0
    scale: float = 1.0

    def forward(self, y: np.ndarray) -> np.ndarray:
        if self.step == "log":
            return np.log(y)
        if self.step == "log1p":
            return np.log1p(y)
        return (y - self.shift) / self.scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        if self.step == "log":
            return np.exp(z)
        if self.step == "log1p":
            return np.expm1(z)
        return z * self.scale + self.shift


@dataclass(frozen=True)
class LabelTransform:
    steps: tuple[Fitted, ...]

    @classmethod
    def fit(cls, names: Sequence[str], y_train: np.ndarray, where: str = "transform") -> LabelTransform:
        """Fit ``names`` in order on the training labels (NaN: unlabelled, ignored)."""
        y = np.asarray(y_train, dtype=float)
        y = y[np.isfinite(y)]
        fitted = []
        for name in names:
            if name not in STEPS:
                raise TasksimError(f"{where}: unknown label transform '{name}'; choose from {', '.join(STEPS)}")
            if name == "log" and (y <= 0).any():
                raise TasksimError(f"{where}: 'log' needs positive labels; the training labels reach {y.min():g}")
            if name == "log1p" and (y <= -1).any():
                raise TasksimError(f"{where}: 'log1p' needs labels above -1; the training labels reach {y.min():g}")
            if name == "standardise":
                step = Fitted(name, float(y.mean()), float(y.std()) or 1.0)
            elif name == "min-max":
                step = Fitted(name, float(y.min()), float(np.ptp(y)) or 1.0)
            else:
                step = Fitted(name)
            fitted.append(step)
            y = step.forward(y)
        return cls(tuple(fitted))

    def forward(self, y: np.ndarray) -> np.ndarray:
        for s in self.steps:
            y = s.forward(np.asarray(y, dtype=float))
        return y

    def inverse(self, z: np.ndarray) -> np.ndarray:
        for s in reversed(self.steps):
            z = s.inverse(np.asarray(z, dtype=float))
        return z

    @property
    def names(self) -> list[str]:
        return [s.step for s in self.steps]

    def mae_scale(self) -> float:
        """What an MAE in task units is multiplied by to be in transformed units; only an affine chain
        has one (a log does not scale errors uniformly)."""
        if any(s.step not in AFFINE for s in self.steps):
            raise TasksimError(f"label transform {' then '.join(self.names)}: an MAE has no single scale "
                               "through a log; report it on the transformed predictions")
        return float(1.0 / np.prod([s.scale for s in self.steps]))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [{"step": s.step, "shift": s.shift, "scale": s.scale} for s in self.steps]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LabelTransform:
        return cls(tuple(Fitted(str(s["step"]), float(s["shift"]), float(s["scale"])) for s in raw["steps"]))
