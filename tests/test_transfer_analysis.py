"""Transfer-study statistics (AUC, fold SEs, similarity-vs-gain thresholds) against hand-computed values, and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tasksim_ray.transfer.analysis import (
    auc,
    fold_gains,
    gain_matrix,
    mean_se,
    normalised_auc,
    similarity_vs_gain,
    summarise_curve,
)

NAMES = ["a", "b", "c", "d"]
# Measured (target, source) pairs with their similarity sim[i, j] and gain[i, j]; everything else is unmeasured.
PAIRS = {("a", "b"): (0.9, 0.10), ("a", "c"): (0.8, -0.05), ("b", "a"): (0.7, 0.20),
         ("b", "d"): (0.4, 0.02), ("c", "d"): (0.3, -0.10), ("d", "c"): (0.1, 0.0)}


def _example(gain_sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    sim = np.full((4, 4), 0.5)
    np.fill_diagonal(sim, 1.0)
    for (t, s), (v, _) in PAIRS.items():
        sim[NAMES.index(t), NAMES.index(s)] = v
    sim[NAMES.index("c"), NAMES.index("a")] = np.nan  # gain measured below, similarity missing: skipped
    gains = {k: gain_sign * g for k, (_, g) in PAIRS.items()} | {("c", "a"): 0.3, ("a", "a"): 5.0}
    return sim, gain_matrix(NAMES, gains)


def test_auc_constant_curve() -> None:
    sizes = [10, 30, 100, 1000]
    assert auc(sizes, [2.5] * 4) == pytest.approx(2.5 * 990)
    assert normalised_auc(sizes, [2.5] * 4) == pytest.approx(2.5)


def test_auc_three_points_by_hand() -> None:
    # (4 + 2) / 2 * (20 - 10) + (2 + 1) / 2 * (40 - 20) = 30 + 30 = 60; range 30 -> normalised 2
    assert auc([10, 20, 40], [4.0, 2.0, 1.0]) == pytest.approx(60.0)
    assert normalised_auc([10, 20, 40], [4.0, 2.0, 1.0]) == pytest.approx(2.0)


@pytest.mark.parametrize(("sizes", "mae", "match"), [
    ([10], [1.0], "at least 2"),
    ([10, 10, 20], [1.0, 1.0, 1.0], "strictly increasing"),
    ([20, 10], [1.0, 1.0], "strictly increasing"),
    ([10, 20], [1.0], "equal length"),
    ([10, 20], [1.0, np.nan], "missing"),
])
def test_auc_rejects_bad_curves(sizes: list[int], mae: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auc(sizes, mae)


def test_summarise_curve_matches_numpy() -> None:
    sizes = [10, 20, 40]
    m = np.array([[4.0, 2.0, 1.0], [6.0, 3.0, 2.0], [5.0, 2.5, 1.0]])
    s = summarise_curve(sizes, m)
    aucs = np.trapezoid(m, sizes, axis=1)  # 60, 95, 72.5
    assert aucs[:2].tolist() == pytest.approx([60.0, 95.0])
    assert s.n_folds == 3 and s.sizes == sizes
    assert s.mae_mean == pytest.approx(m.mean(axis=0).tolist())
    assert s.mae_se == pytest.approx((m.std(axis=0, ddof=1) / np.sqrt(3)).tolist())
    assert s.auc_mean == pytest.approx(aucs.mean())
    assert s.auc_se == pytest.approx(aucs.std(ddof=1) / np.sqrt(3))
    assert s.auc_norm_mean == pytest.approx(aucs.mean() / 30)
    assert s.auc_norm_se == pytest.approx(aucs.std(ddof=1) / np.sqrt(3) / 30)
    assert json.loads(json.dumps(s.to_dict()))["auc_mean"] == pytest.approx(aucs.mean())


def test_summarise_curve_one_fold_and_missing_cells() -> None:
    one = summarise_curve([10, 20, 40], np.array([[4.0, 2.0, 1.0]]))
    assert (one.auc_mean, one.auc_se, one.mae_se) == (pytest.approx(60.0), 0.0, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"missing \(NaN\) cells at .*\(1, 2\)"):
        summarise_curve([10, 20, 40], np.array([[4.0, 2.0, 1.0], [4.0, 2.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        summarise_curve([10, 20], np.array([[4.0, 2.0, 1.0]]))


def test_fold_gains_and_mean_se() -> None:
    # fold 0: (100 - 80) / 100 = 0.2; fold 1: (200 - 220) / 200 = -0.1; fold 2: (50 - 25) / 50 = 0.5
    g = fold_gains(np.array([100.0, 200.0, 50.0]), np.array([80.0, 220.0, 25.0]))
    assert g.tolist() == pytest.approx([0.2, -0.1, 0.5])
    mean, se = mean_se(g)
    assert mean == pytest.approx(0.2) and se == pytest.approx(np.std(g, ddof=1) / np.sqrt(3))
    assert mean_se([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError, match="equal length"):
        fold_gains(np.array([1.0, 2.0]), np.array([1.0]))


def test_gain_matrix_layout() -> None:
    _, g = _example()
    assert g[NAMES.index("b"), NAMES.index("a")] == pytest.approx(0.20)  # row = target, column = source
    assert np.isnan(np.diag(g)).all()  # the ("a", "a") entry is ignored
    assert np.isfinite(g).sum() == 7
    with pytest.raises(ValueError, match="unknown"):
        gain_matrix(NAMES, {("a", "z"): 0.1})


def test_similarity_vs_gain_by_hand() -> None:
    # Used pairs (off-diagonal, both finite; (c, a) has no similarity): 6.
    #   sim: 0.9 (+), 0.8 (-), 0.7 (+), 0.4 (+), 0.3 (-), 0.1 (0 -> not positive); P = 3 positives.
    # F1 = 2tp / (2tp + fp + fn) for predicted similar = sim >= t:
    #   t=0.9: tp1 fp0 fn2 -> 2/4 = 0.50     t=0.4: tp3 fp1 fn0 -> 6/7 = 0.857  <- best
    #   t=0.8: tp1 fp1 fn2 -> 2/5 = 0.40     t=0.3: tp3 fp2 fn0 -> 6/8 = 0.75
    #   t=0.7: tp2 fp1 fn1 -> 4/6 = 0.667    t=0.1: tp3 fp3 fn0 -> 6/9 = 0.667
    # At t=0.4: tn = 6 - 3 - 1 - 0 = 2 -> [[tn, fp], [fn, tp]] = [[2, 1], [0, 3]]; precision 3/4, recall 1.
    sim, gain = _example()
    r = similarity_vs_gain(NAMES, sim, gain, "cosine")
    assert r.n_pairs == 6 and len(r.pairs) == 6
    assert r.threshold == pytest.approx(0.4)
    assert r.f1 == pytest.approx(6 / 7)
    assert (r.precision, r.recall) == (pytest.approx(0.75), pytest.approx(1.0))
    assert r.confusion == [[2, 1], [0, 3]]
    assert {"target": "b", "source": "a", "similarity": 0.7, "gain": 0.2} in r.pairs
    x = np.array([p["similarity"] for p in r.pairs])
    y = np.array([p["gain"] for p in r.pairs])
    assert r.pearson_r == pytest.approx(stats.pearsonr(x, y).statistic)
    assert r.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)

    # Same ordering as a distance (1 - sim): same split, threshold reported in distance units (dist <= 0.6).
    d = similarity_vs_gain(NAMES, 1.0 - sim, gain, "distance", higher_is_similar=False)
    assert d.threshold == pytest.approx(0.6)
    assert (d.f1, d.confusion) == (pytest.approx(6 / 7), [[2, 1], [0, 3]])
    assert d.pearson_r == pytest.approx(-r.pearson_r)


def test_similarity_vs_gain_ties_and_no_positives() -> None:
    names = ["a", "b", "c"]
    # sims 0.9 (+), 0.8 (-), 0.7 (-), 0.6 (+): t=0.9 gives 2/(2+0+1) = 2/3, t=0.6 gives 4/(4+2+0) = 2/3 -> tie,
    # and the stricter (higher) threshold 0.9 wins; confusion there: tn 2, fp 0, fn 1, tp 1.
    sim = np.array([[1.0, 0.9, 0.8], [0.7, 1.0, 0.6], [0.0, 0.0, 1.0]])
    gain = np.array([[np.nan, 0.1, -0.1], [-0.2, np.nan, 0.3], [np.nan, np.nan, np.nan]])
    r = similarity_vs_gain(names, sim, gain, "cosine")
    assert (r.threshold, r.f1, r.confusion) == (pytest.approx(0.9), pytest.approx(2 / 3), [[2, 0], [1, 1]])

    # No positive pair: F1 0 and the strictest threshold (max similarity; min distance).
    sim4, gain4 = _example(gain_sign=-1.0)
    none = similarity_vs_gain(NAMES, sim4, np.minimum(gain4, 0.0), "cosine")
    assert (none.f1, none.threshold, none.confusion) == (0.0, pytest.approx(0.9), [[5, 1], [0, 0]])
    dist = similarity_vs_gain(NAMES, 1.0 - sim4, np.minimum(gain4, 0.0), "distance", higher_is_similar=False)
    assert dist.threshold == pytest.approx(0.1)


def test_similarity_vs_gain_degenerate_correlations() -> None:
    names = ["a", "b"]
    r = similarity_vs_gain(names, np.array([[1.0, 0.5], [0.2, 1.0]]), np.array([[np.nan, 0.1], [0.2, np.nan]]), "m")
    assert r.n_pairs == 2 and math.isnan(r.pearson_r) and math.isnan(r.spearman_p)
    assert json.loads(json.dumps(r.to_dict()))["pearson_r"] is None  # NaN -> null keeps the JSON standard
    flat = similarity_vs_gain(NAMES, np.full((4, 4), 0.5), _example()[1], "flat")
    assert math.isnan(flat.pearson_r) and flat.threshold == 0.5
    with pytest.raises(ValueError, match="no off-diagonal pair"):
        similarity_vs_gain(names, np.eye(2), np.full((2, 2), np.nan), "m")


def test_plots_write_pngs(tmp_path: Path) -> None:
    from tasksim_ray.transfer import plots

    sizes = [10, 20, 40]
    curves = {"from b": summarise_curve(sizes, np.array([[3.0, 1.5, 0.9], [3.2, 1.6, 1.0]])),
              "scratch": summarise_curve(sizes, np.array([[4.0, 2.0, 1.0], [4.4, 2.2, 1.1]]))}
    sim, gain = _example()
    result = similarity_vs_gain(NAMES, sim, gain, "cosine")
    files = {name: tmp_path / f"{name}.png" for name in ("curves", "gain", "scatter", "confusion", "bars", "gate")}
    plots.plot_learning_curves(files["curves"], "target a", "eV", curves)
    plots.plot_gain_heatmap(files["gain"], NAMES, gain, "relative AUC gain")
    plots.plot_similarity_vs_gain(files["scatter"], result)
    plots.plot_confusion(files["confusion"], result)
    bars = {"scratch": ([1.0, 2.0], [0.1, 0.2]), "diverse subset": ([0.8, 1.5], [0.1, 0.1])}
    plots.plot_subset_bars(files["bars"], ["a", "b"], bars, "norm. AUC", "subsets")
    plots.plot_gate_heatmap(files["gate"], ["a", "b"], ["c", "d", "e"],
                            np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]]), "gate weights")
    for path in files.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values())  # no temp files left


def test_paired_difference_uses_a_t_interval_over_folds() -> None:
    from tasksim_ray.transfer.analysis import paired_difference

    got = paired_difference(np.array([10.0, 12.0, 11.0]), np.array([1.0, 2.0, 1.5]))
    d = np.array([9.0, 10.0, 9.5])
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
    assert got["mean"] == pytest.approx(9.5) and got["ci"] == pytest.approx([9.5 - half, 9.5 + half], rel=1e-5)
    assert got["differ"]
    assert not paired_difference(np.array([1.0, -1.0, 2.0]), np.zeros(3))["differ"]
    assert not paired_difference(np.array([5.0]), np.array([1.0]))["differ"]  # one fold: no interval
