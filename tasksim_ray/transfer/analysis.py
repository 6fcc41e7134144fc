"""Learning-curve and transfer-gain statistics: does task similarity predict whether pretraining helps?

Pure numpy/scipy so the numbers can be recomputed from saved tables without torch or Ray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


def _validated_curve(sizes: list[int] | np.ndarray, mae: list[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(sizes, dtype=float)
    y = np.asarray(mae, dtype=float)
    if x.ndim != 1 or y.shape != x.shape:
        raise ValueError(f"sizes and mae must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError(f"a learning curve needs at least 2 training-set sizes, got {x.size}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"training-set sizes must be strictly increasing, got {x.tolist()}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"MAE has missing (non-finite) points: {y.tolist()}")
    return x, y


def auc(sizes: list[int] | np.ndarray, mae: list[float] | np.ndarray) -> float:
    """Area under MAE-vs-size: one number that rewards being good at every data budget, not just the largest."""
    x, y = _validated_curve(sizes, mae)
    return float(np.trapezoid(y, x))


def normalised_auc(sizes: list[int] | np.ndarray, mae: list[float] | np.ndarray) -> float:
    """AUC divided by the size range: an average MAE in the target's own units, comparable across size grids."""
    x, _ = _validated_curve(sizes, mae)
    return auc(sizes, mae) / float(x[-1] - x[0])


def mean_se(x: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error (ddof=1); SE is 0.0 for a single value rather than NaN, so one-fold runs still report."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"mean_se needs a non-empty 1-D array, got shape {a.shape}")
    if a.size == 1:
        return float(a[0]), 0.0
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


@dataclass
class CurveSummary:
    """One model's learning curve on one target, aggregated over cross-validation folds."""

    sizes: list[int]
    mae_mean: list[float]
    mae_se: list[float]
    auc_mean: float
    auc_se: float
    auc_norm_mean: float
    auc_norm_se: float
    n_folds: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_curve(sizes: list[int] | np.ndarray, mae_by_fold: np.ndarray) -> CurveSummary:
    """Per-fold AUCs first, then mean/SE, so the SE reflects fold-to-fold spread of the whole curve.

    Missing cells (NaN) are an error: averaging an incomplete grid would silently compare different curves.
    """
    m = np.asarray(mae_by_fold, dtype=float)
    if m.ndim != 2 or m.shape[1] != len(sizes) or m.shape[0] == 0:
        raise ValueError(f"mae_by_fold must have shape (n_folds >= 1, {len(sizes)}), got {m.shape}")
    if np.isnan(m).any():
        missing = [(int(f), int(s)) for f, s in np.argwhere(np.isnan(m))]
        raise ValueError(f"mae_by_fold has missing (NaN) cells at (fold, size index) {missing}")
    aucs = np.array([auc(sizes, row) for row in m])
    norms = np.array([normalised_auc(sizes, row) for row in m])
    per_size = [mean_se(m[:, k]) for k in range(m.shape[1])]
    auc_mean, auc_se = mean_se(aucs)
    norm_mean, norm_se = mean_se(norms)
    return CurveSummary(sizes=[int(s) for s in sizes], mae_mean=[p[0] for p in per_size],
                        mae_se=[p[1] for p in per_size], auc_mean=auc_mean, auc_se=auc_se,
                        auc_norm_mean=norm_mean, auc_norm_se=norm_se, n_folds=int(m.shape[0]))


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Mean per-fold difference a - b with its t interval (n - 1 degrees of freedom): whether two
    arms measured on the same folds differ beyond their fold-to-fold noise."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, se = mean_se(d)
    half = float(stats.t.ppf((1 + level) / 2, d.size - 1) * se) if d.size > 1 else float("nan")
    return {"mean": mean, "ci": [mean - half, mean + half], "differ": bool(d.size > 1 and abs(mean) > half)}


def fold_gains(auc_scratch: np.ndarray, auc_transfer: np.ndarray) -> np.ndarray:
    """Relative AUC improvement per fold, (scratch - transfer) / scratch; paired by fold so the
    fold's split difficulty cancels. Positive = pretraining helped."""
    s = np.asarray(auc_scratch, dtype=float)
    t = np.asarray(auc_transfer, dtype=float)
    if s.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"fold AUCs must be 1-D of equal length, got shapes {s.shape} and {t.shape}")
    if np.any(s <= 0):
        raise ValueError(f"scratch AUCs must be positive to define a relative gain, got {s.tolist()}")
    return (s - t) / s


@dataclass
class SimGain:
    """How well one similarity metric predicts transfer gain over all measured (target, source) pairs.

    confusion is [[tn, fp], [fn, tp]]: rows actual gain <= 0 / gain > 0, columns predicted not-similar / similar.
    """

    metric: str
    n_pairs: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    threshold: float
    f1: float
    precision: float
    recall: float
    confusion: list[list[int]]
    pairs: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with NaN statistics as None, so the JSON written from it stays standard."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def _correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    # Undefined (not an error) for too few pairs or a constant vector: a metric can legitimately be flat.
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, math.nan
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    return float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue)


def similarity_vs_gain(names: list[str], sim: np.ndarray, gain: np.ndarray, metric: str,
                       higher_is_similar: bool = True) -> SimGain:
    """Correlate similarity with gain and find the similarity threshold that best separates helpful sources.

    gain[i, j] is the gain on target names[i] from source names[j]; the similarity used is sim[i, j].
    Every off-diagonal pair with both values finite is used (NaN gain = not measured). For distances
    (higher_is_similar=False) a pair is predicted similar when sim <= threshold. The threshold maximises
    F1 over the unique similarity values, ties going to the stricter rule; with no positive pairs F1 is 0
    and the threshold is the strictest candidate (the max similarity, or the min distance).
    """
    n = len(names)
    s_all = np.asarray(sim, dtype=float)
    g_all = np.asarray(gain, dtype=float)
    if s_all.shape != (n, n) or g_all.shape != (n, n):
        raise ValueError(f"sim and gain must be ({n}, {n}), got {s_all.shape} and {g_all.shape}")
    mask = np.isfinite(s_all) & np.isfinite(g_all) & ~np.eye(n, dtype=bool)
    if not mask.any():
        raise ValueError(f"{metric}: no off-diagonal pair has both a finite similarity and a measured gain")
    rows, cols = np.nonzero(mask)
    x, y = s_all[mask], g_all[mask]
    r, rp, rho, rhop = _correlations(x, y)

    score = x if higher_is_similar else -x  # in score space, larger always means more similar
    cands = np.unique(score)  # ascending
    pred = score[None, :] >= cands[:, None]  # (n_candidates, n_pairs)
    pos = y > 0
    tp = (pred & pos).sum(axis=1)
    fp = (pred & ~pos).sum(axis=1)
    fn = (~pred & pos).sum(axis=1)
    f1s = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    best = len(cands) - 1 - int(np.argmax(f1s[::-1]))  # last maximum = highest score threshold = strictest
    tp_b, fp_b, fn_b = int(tp[best]), int(fp[best]), int(fn[best])
    tn_b = int(x.size) - tp_b - fp_b - fn_b
    pairs = [{"target": names[i], "source": names[j], "similarity": float(s_all[i, j]), "gain": float(g_all[i, j])}
             for i, j in zip(rows, cols, strict=True)]
    return SimGain(metric=metric, n_pairs=int(x.size), pearson_r=r, pearson_p=rp, spearman_rho=rho,
                   spearman_p=rhop, threshold=float(cands[best] if higher_is_similar else -cands[best]),
                   f1=float(f1s[best]), precision=tp_b / (tp_b + fp_b) if tp_b + fp_b else 0.0,
                   recall=tp_b / (tp_b + fn_b) if tp_b + fn_b else 0.0,
                   confusion=[[tn_b, fp_b], [fn_b, tp_b]], pairs=pairs)


def gain_matrix(names: list[str], targets_sources_gain: dict[tuple[str, str], float]) -> np.ndarray:
    """(T, T) gain matrix, rows targets and columns sources, NaN where not measured.

    The diagonal stays NaN even if given: a task is not its own transfer source.
    """
    index = {name: k for k, name in enumerate(names)}
    m = np.full((len(names), len(names)), np.nan)
    for (target, source), g in targets_sources_gain.items():
        unknown = [t for t in (target, source) if t not in index]
        if unknown:
            raise ValueError(f"gain given for unknown task(s) {unknown}; known: {names}")
        if target != source:
            m[index[target], index[source]] = g
    return m
