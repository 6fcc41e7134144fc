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

from dataclasses import asdict, dataclass
from typing import Any

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


def _finite_mean(values: list[float]) -> float:
    kept = [v for v in values if np.isfinite(v)]
    return float(np.mean(kept)) if kept else float("nan")


def summarise(scores: Scores, gains: dict[str, dict[str, float]]) -> dict[str, float]:
    calls = [judge_target(scores[t], gains[t]) for t in gains]

    return {"top1": float(np.mean([c.top1 for c in calls])), "top3": float(np.mean([c.top3 for c in calls])),
            "regret": float(np.mean([c.regret for c in calls])), "kendall": _finite_mean([c.kendall for c in calls]),
            "spearman": _finite_mean([c.spearman for c in calls])}


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


def _column_mean(x: np.ndarray) -> np.ndarray:
    """Mean of each column over its finite entries (0 for a column with none)."""
    finite = np.isfinite(x)
    return np.where(finite, x, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)


def _ridge_fit_predict(x: np.ndarray, y: np.ndarray, query: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression on z-scored columns (a constant column drops out; a missing value is the
    training column's mean), intercept not shrunk."""
    mean = _column_mean(x)
    x = np.where(np.isfinite(x), x, mean)
    query = np.where(np.isfinite(query), query, mean)
    sd = x.std(axis=0)
    sd = np.where(sd > 0, sd, np.inf)
    z = np.column_stack([np.ones(len(x)), (x - mean) / sd])
    penalty = alpha * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    w = np.linalg.solve(z.T @ z + penalty, z.T @ y)
    return np.column_stack([np.ones(len(query)), (query - mean) / sd]) @ w


def leave_one_target_out(features: dict[str, dict[str, np.ndarray]], gains: dict[str, dict[str, float]],
                         alpha: float = 1.0) -> Scores:
    """Predicted gain of every (target, source) pair from its feature vector (directional: the
    pair's own row), by ridge regression fitted on the other targets' pairs only."""
    out: Scores = {}
    for held in gains:
        rows = [(features[t][s], gains[t][s]) for t in gains if t != held for s in gains[t]]
        x = np.array([r[0] for r in rows], dtype=float)
        y = np.array([r[1] for r in rows], dtype=float)
        sources = list(gains[held])
        pred = _ridge_fit_predict(x, y, np.array([features[held][s] for s in sources], dtype=float), alpha)
        out[held] = dict(zip(sources, pred.tolist()))
    return out


def prediction_intervals(features: dict[str, dict[str, np.ndarray]], fold_gains: FoldGains, n_boot: int,
                         seed: int, level: float = 0.95) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile intervals of each leave-one-target-out predicted gain over fold resamples."""
    n_folds = len(next(iter(next(iter(fold_gains.values())).values())))
    rng = np.random.default_rng(seed)
    draws = [leave_one_target_out(features, mean_gains(fold_gains, rng.integers(0, n_folds, n_folds)))
             for _ in range(n_boot)]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {t: {s: (float(np.percentile([d[t][s] for d in draws], lo)),
                    float(np.percentile([d[t][s] for d in draws], hi))) for s in row}
            for t, row in fold_gains.items()}


def with_ties_broken_at_random(scores: Scores, gains: dict[str, dict[str, float]], n_draws: int = 200,
                               seed: int = 0) -> dict[str, float]:
    """The summary of a recommender whose ties (e.g. equal source sizes) are broken at random:
    the mean over draws, so a constant score is the random baseline, not the first name."""
    rng = np.random.default_rng(seed)

    def jittered(row: dict[str, float]) -> dict[str, float]:
        ranks = np.unique(list(row.values()), return_inverse=True)[1]  # equal scores, equal rank
        return dict(zip(row, (ranks + 0.5 * rng.random(len(ranks))).tolist()))

    draws = [summarise({t: jittered(row) for t, row in scores.items()}, gains) for _ in range(n_draws)]
    return {k: _finite_mean([d[k] for d in draws]) for k in draws[0]}


def dont_pretrain(predicted: Scores) -> list[str]:
    """Targets for which no source is predicted to help: the recommendation there is scratch."""
    return [t for t, row in predicted.items() if max(row.values()) <= 0]


def every_source_hurts(gains: dict[str, dict[str, float]]) -> list[str]:
    """Targets for which every source measured worse than scratch: where "don't pretrain" is right."""
    return [t for t, row in gains.items() if max(row.values()) < 0]


def negative_transfer(predicted: Scores, gains: dict[str, dict[str, float]]) -> dict[str, float]:
    """Precision and recall of "this source hurts" called where the predicted gain is below zero."""
    called = [(predicted[t][s] < 0, gains[t][s] < 0) for t in gains for s in gains[t]]
    tp = sum(c and h for c, h in called)
    n_called, n_hurt = sum(c for c, _ in called), sum(h for _, h in called)
    return {"precision": tp / n_called if n_called else float("nan"), "recall": tp / n_hurt if n_hurt else float("nan")}


def with_within_target_scores(features: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Each feature as two numbers a linear model can compare across targets: its percentile among
    all pairs (bounded, so one outlying target cannot be extrapolated to absurd gains) and its
    z-score among the target's own sources (the rank a recommendation acts on)."""
    pairs = [(t, s) for t, row in features.items() for s in row]
    x = np.array([features[t][s] for t, s in pairs], dtype=float)
    order = np.argsort(np.argsort(np.where(np.isfinite(x), x, -np.inf), axis=0, kind="stable"), axis=0)
    pct = np.where(np.isfinite(x), order / max(len(pairs) - 1, 1), np.nan)
    out: dict[str, dict[str, np.ndarray]] = {t: {} for t in features}
    for t, row in features.items():
        idx = [i for i, p in enumerate(pairs) if p[0] == t]
        v = x[idx]
        mean = _column_mean(v)
        sd = np.sqrt(_column_mean((v - mean) ** 2))
        z = np.where(np.isfinite(v) & (sd > 0), (v - mean) / np.where(sd > 0, sd, 1.0), 0.0)
        for j, i in enumerate(idx):
            out[t][pairs[i][1]] = np.concatenate([pct[i], z[j]])
    return out


def recommend_report(scores: dict[str, Scores], fold_gains: FoldGains, pair_features: dict[str, Scores],
                     source_sizes: dict[str, float], seed: int, n_boot: int = 200) -> dict[str, Any]:
    """Every recommender judged against the measured gains, next to the baselines, and the call per
    target from the one kept: the combined score when it beats the best single metric by regret,
    else that metric. ``scores``: metric -> higher = more recommended; ``pair_features``: cheap
    features of each pair (NaN where unknown), used by the combined score only."""
    gains = mean_gains(fold_gains)
    targets = list(gains)
    single = dict(scores)
    names = list(single) + list(pair_features)
    features = with_within_target_scores({t: {s: np.array([(single | pair_features)[m][t][s] for m in names],
                                                          dtype=float) for s in gains[t]} for t in targets})
    recommenders = dict(single)
    if len(targets) >= 3:
        recommenders["combined"] = leave_one_target_out(features, gains)
    out: dict[str, Any] = {"features": names, "recommenders": {}, "baselines": {
        "random (expected)": random_baseline(gains), "oracle": summarise(gains, gains)}}
    if all(np.isfinite(v) for v in source_sizes.values()):  # published sources may not say what they saw
        out["baselines"]["largest source"] = with_ties_broken_at_random(
            {t: {s: source_sizes[s] for s in gains[t]} for t in targets}, gains, seed=seed)
    for name, sc in recommenders.items():
        out["recommenders"][name] = {"summary": summarise(sc, gains),
                                     "interval": bootstrap(sc, fold_gains, n_boot, seed),
                                     "per_target": {t: asdict(judge_target(sc[t], gains[t])) for t in targets}}
    best_single = min(single, key=lambda m: out["recommenders"][m]["summary"]["regret"]) if single else None
    kept = "combined" in recommenders and (best_single is None or out["recommenders"]["combined"]["summary"]["regret"]
                                           < out["recommenders"][best_single]["summary"]["regret"])
    chosen = "combined" if kept else best_single
    out |= {"best_single": best_single, "combined_kept": kept, "chosen": chosen}
    if chosen is None or len(targets) < 3:
        return out
    # the chosen recommender's gains, calibrated leave-one-target-out, decide "don't pretrain"
    n = len(names)  # features hold each raw value, then its within-target score
    cols = list(range(2 * n)) if chosen == "combined" else [names.index(chosen), n + names.index(chosen)]
    own = {t: {s: f[cols] for s, f in row.items()} for t, row in features.items()}
    predicted = leave_one_target_out(own, gains)
    intervals = prediction_intervals(own, fold_gains, max(20, n_boot // 2), seed)
    out["negative_transfer"] = negative_transfer(predicted, gains)
    out["dont_pretrain"] = dont_pretrain(predicted)
    out["every_source_hurts"] = every_source_hurts(gains)
    out["targets"] = {}
    for t in targets:
        call = judge_target(recommenders[chosen][t], gains[t])
        ranked = sorted(gains[t], key=lambda s: -recommenders[chosen][t][s])
        top = max(predicted[t], key=predicted[t].get)
        out["targets"][t] = {"call": "scratch" if t in out["dont_pretrain"] else "pretrain",
                             "recommended": call.recommended, "top3": ranked[:3],
                             "predicted_gain": predicted[t][call.recommended],
                             "best_predicted": top, "best_predicted_gain": predicted[t][top],
                             "best_predicted_interval": list(intervals[t][top]),
                             "measured_best": call.best, "measured_best_gain": gains[t][call.best],
                             "recommended_gain": gains[t][call.recommended], "regret": call.regret}
    return out
