"""Does the recommendation hold? Each similarity metric scored as a recommender against the measured
transfer gains, next to a combined score, a random source and the oracle.

For a target, a metric ranks its sources (higher score = more recommended; a distance is negated
by the caller). Against the measured gains (relative AUC improvement over scratch, in % of scratch):
top-1 / top-3 hit (the measured best source is the top or among the top 3), regret (best gain minus
the recommended source's gain), Kendall tau and Spearman between score and gain, and the
negative-transfer call (precision / recall of "this source hurts", gain < 0). Intervals come from
resampling folds. The combined score predicts gain from every metric of a pair by ridge
regression fitted leave-one-target-out, so a target's own gains never inform its recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau, spearmanr

Scores = dict[str, dict[str, float]]  # target -> source -> score
FoldGains = dict[str, dict[str, np.ndarray]]  # target -> source -> gain per fold (%)


@dataclass(frozen=True)
class TargetCall:
    top1: bool
    top3: bool
    regret: float
    kendall: float
    spearman: float
    recommended: str
    best: str


def _nan_corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(fn(x, y)[0])


def judge_target(scores: dict[str, float], gains: dict[str, float]) -> TargetCall:
    """How well one target's source scores recommend, against its mean gains."""
    sources = sorted(gains)
    s = np.array([scores[k] for k in sources])
    g = np.array([gains[k] for k in sources])
    order = np.argsort(-s, kind="stable")
    best = int(np.argmax(g))
    recommended = int(order[0])
    return TargetCall(bool(order[0] == best), bool(best in order[:3]), float(g[best] - g[recommended]),
                      _nan_corr(kendalltau, s, g), _nan_corr(spearmanr, s, g), sources[recommended], sources[best])


def summarise(scores: Scores, gains: dict[str, dict[str, float]]) -> dict[str, float]:
    calls = [judge_target(scores[t], gains[t]) for t in gains]

    def finite_mean(values: list[float]) -> float:
        kept = [v for v in values if np.isfinite(v)]
        return float(np.mean(kept)) if kept else float("nan")

    return {"top1": float(np.mean([c.top1 for c in calls])), "top3": float(np.mean([c.top3 for c in calls])),
            "regret": float(np.mean([c.regret for c in calls])), "kendall": finite_mean([c.kendall for c in calls]),
            "spearman": finite_mean([c.spearman for c in calls])}


def random_baseline(gains: dict[str, dict[str, float]]) -> dict[str, float]:
    """Expected values of picking a source uniformly at random."""
    top1, top3, regret = [], [], []
    for g in gains.values():
        v = np.array(list(g.values()))
        top1.append(1 / len(v))
        top3.append(min(3, len(v)) / len(v))
        regret.append(float(np.max(v) - np.mean(v)))
    return {"top1": float(np.mean(top1)), "top3": float(np.mean(top3)), "regret": float(np.mean(regret)),
            "kendall": 0.0, "spearman": 0.0}


def mean_gains(fold_gains: FoldGains, folds: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    return {t: {s: float(np.mean(v if folds is None else v[folds])) for s, v in row.items()}
            for t, row in fold_gains.items()}


def bootstrap(scores: Scores, fold_gains: FoldGains, n_boot: int, seed: int,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the summary over fold resamples (the gains move, the scores do not)."""
    n_folds = len(next(iter(next(iter(fold_gains.values())).values())))
    rng = np.random.default_rng(seed)
    draws = [summarise(scores, mean_gains(fold_gains, rng.integers(0, n_folds, n_folds))) for _ in range(n_boot)]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for k in draws[0] if draws else []:
        values = [d[k] for d in draws if np.isfinite(d[k])]
        out[k] = (float(np.percentile(values, lo)), float(np.percentile(values, hi))) if values else (
            float("nan"), float("nan"))
    return out


def leave_one_target_out(features: dict[str, dict[str, np.ndarray]], gains: dict[str, dict[str, float]],
                         alpha: float = 1.0) -> Scores:
    """Predicted gain of every (target, source) pair from its feature vector (one entry per metric,
    directional: the pair's own row), by ridge regression on the other targets' pairs only."""
    out: Scores = {}
    for held in gains:
        rows = [(features[t][s], gains[t][s]) for t in gains if t != held for s in gains[t]]
        x = np.array([r[0] for r in rows], dtype=float)
        y = np.array([r[1] for r in rows], dtype=float)
        mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-12
        z = np.column_stack([np.ones(len(x)), (x - mu) / sd])
        penalty = alpha * np.eye(z.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        w = np.linalg.solve(z.T @ z + penalty, z.T @ y)
        out[held] = {s: float(np.r_[1.0, (features[held][s] - mu) / sd] @ w) for s in gains[held]}
    return out


def dont_pretrain(predicted: Scores) -> list[str]:
    """Targets for which no source is predicted to help: the recommendation there is scratch."""
    return [t for t, row in predicted.items() if max(row.values()) <= 0]


def negative_transfer(predicted: Scores, gains: dict[str, dict[str, float]]) -> dict[str, float]:
    """Precision and recall of "this source hurts" called where the predicted gain is below zero."""
    called = [(predicted[t][s] < 0, gains[t][s] < 0) for t in gains for s in gains[t]]
    tp = sum(c and h for c, h in called)
    n_called, n_hurt = sum(c for c, _ in called), sum(h for _, h in called)
    return {"precision": tp / n_called if n_called else float("nan"), "recall": tp / n_hurt if n_hurt else float("nan")}
