"""The linear probe: does a frozen pretrained encoder's representation carry the target?

Graph features of the training, validation and test crystals (computed once, encoder frozen) are
standardised with the training split's mean and std; a ridge regression (closed form, intercept
unpenalised) is fitted on the training split for each alpha of a grid, and the alpha with the lowest
validation MAE is kept. The standard check, before any fine-tuning, that the pretrained features are
informative: a probe that cannot beat predicting the training mean says they are not, linearly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = tuple(10.0 ** k for k in range(-3, 5))  # "no effect" to "predicts the mean", per standardised feature


@dataclass(frozen=True)
class ProbeResult:
    alpha: float
    val_mae: float
    test_pred: np.ndarray
    val_mae_per_alpha: dict[float, float]
    edge: bool  # the chosen alpha is the grid's smallest or largest


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of ridge regression on (already standardised) ``x``."""
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - xm @ w)


def ridge_probe(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray, test: np.ndarray,
                alphas: tuple[float, ...] = ALPHAS) -> ProbeResult:
    """Standardise on ``train``, fit ridge per alpha, keep the alpha with the lowest validation MAE."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    tr, va, te = ((a - mean) / std for a in (train, val, test))
    maes, fits = {}, {}
    for a in alphas:
        w, b = ridge_fit(tr, y_train, a)
        fits[a] = (w, b)
        maes[a] = float(np.mean(np.abs(va @ w + b - y_val)))
    best = min(alphas, key=lambda a: maes[a])
    w, b = fits[best]
    return ProbeResult(best, maes[best], te @ w + b, maes, best in (alphas[0], alphas[-1]))
