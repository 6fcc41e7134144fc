"""The recommendation scores on constructed gain matrices: a perfect score recommends the best source
(hit rate 1, regret 0, tau 1), a reversed one the worst; the combined score never sees the held-out
target's gains; "don't pretrain" and the negative-transfer call follow the predicted gains."""

from __future__ import annotations

import numpy as np
import pytest

from tasksim_ray.transfer.recommend import (
    bootstrap,
    dont_pretrain,
    every_source_hurts,
    leave_one_target_out,
    mean_gains,
    negative_transfer,
    random_baseline,
    recommend_report,
    summarise,
    with_ties_broken_at_random,
)

TASKS = ["a", "b", "c", "d", "e"]
RNG = np.random.default_rng(0)
FOLDS = {t: {s: RNG.normal(10 * i - 5 * j, 1.0, size=3) for j, s in enumerate(TASKS) if s != t}
         for i, t in enumerate(TASKS)}
GAINS = mean_gains(FOLDS)


def test_a_perfect_score_hits_every_best_source_with_no_regret() -> None:
    got = summarise(GAINS, GAINS)
    assert got["top1"] == 1.0 and got["top3"] == 1.0 and got["regret"] == 0.0
    assert got["kendall"] == pytest.approx(1.0) and got["spearman"] == pytest.approx(1.0)


def test_a_reversed_score_is_the_worst_recommender() -> None:
    reversed_scores = {t: {s: -g for s, g in row.items()} for t, row in GAINS.items()}
    got = summarise(reversed_scores, GAINS)
    worst = np.mean([max(r.values()) - min(r.values()) for r in GAINS.values()])
    assert got["top1"] == 0.0 and got["regret"] == pytest.approx(worst)
    assert got["kendall"] == pytest.approx(-1.0) and got["spearman"] == pytest.approx(-1.0)
    base = random_baseline(GAINS)
    assert base["top1"] == pytest.approx(1 / 4) and base["top3"] == pytest.approx(3 / 4)
    assert summarise(GAINS, GAINS)["regret"] < base["regret"] < got["regret"]


def test_intervals_come_from_fold_resamples() -> None:
    ci = bootstrap(GAINS, FOLDS, n_boot=50, seed=0)
    assert ci["top1"][0] <= 1.0 <= ci["top1"][1] + 1e-12 and ci["regret"][0] >= 0.0


def test_leave_one_target_out_never_sees_the_held_out_gains() -> None:
    features = {t: {s: np.array([g, RNG.normal()]) for s, g in row.items()} for t, row in GAINS.items()}
    predicted = leave_one_target_out(features, GAINS)
    changed = {t: dict(row) for t, row in GAINS.items()}
    changed["c"] = {s: 1e6 * (RNG.random() - 0.5) for s in changed["c"]}  # the held-out target's gains, garbled
    again = leave_one_target_out(features, changed)
    assert again["c"] == pytest.approx(predicted["c"])  # c's prediction used only the other targets
    assert again["a"] != pytest.approx(predicted["a"])  # ... while the others did use c's
    assert summarise(predicted, GAINS)["top1"] == 1.0  # the informative feature carries over


def test_dont_pretrain_and_the_negative_transfer_call() -> None:
    predicted = {"a": {"b": -1.0, "c": -0.5}, "b": {"a": 2.0, "c": -3.0}}
    measured = {"a": {"b": -2.0, "c": 1.0}, "b": {"a": 1.0, "c": -1.0}}
    assert dont_pretrain(predicted) == ["a"]
    assert negative_transfer(predicted, measured) == {"precision": 2 / 3, "recall": 1.0}


def test_ties_broken_at_random_make_a_constant_score_the_random_baseline() -> None:
    constant = {t: {s: 3000.0 for s in row} for t, row in GAINS.items()}
    got = with_ties_broken_at_random(constant, GAINS, n_draws=400, seed=1)
    base = random_baseline(GAINS)
    assert got["top1"] == pytest.approx(base["top1"], abs=0.05)
    assert got["regret"] == pytest.approx(base["regret"], rel=0.1)


def test_report_keeps_the_combined_score_only_when_it_beats_the_best_metric() -> None:
    noise = {t: {s: float(RNG.normal()) for s in row} for t, row in GAINS.items()}
    perfect = {t: dict(row) for t, row in GAINS.items()}
    nan_feature = {t: {s: float("nan") for s in row} for t, row in GAINS.items()}  # unknown: imputed, not fatal
    sizes = dict.fromkeys(TASKS, 100.0)
    rep = recommend_report({"noise": noise, "perfect": perfect}, FOLDS, {"label r": nan_feature}, sizes, seed=0,
                           n_boot=20)
    assert rep["best_single"] == "perfect" and rep["recommenders"]["perfect"]["summary"]["regret"] == 0.0
    assert not rep["combined_kept"] and rep["chosen"] == "perfect"
    assert rep["baselines"]["oracle"]["top1"] == 1.0
    for t, e in rep["targets"].items():
        assert e["recommended"] in (GAINS[t] | {"scratch": 0})
        lo, hi = e["best_predicted_interval"]
        assert lo <= hi
    # a lone noisy metric: the combined score, fitted on the informative pair feature, is kept
    rep = recommend_report({"noise": noise}, FOLDS, {"gain proxy": perfect}, sizes, seed=0, n_boot=20)
    assert rep["combined_kept"] and rep["chosen"] == "combined"
    assert rep["recommenders"]["combined"]["summary"]["top1"] == 1.0


def test_every_source_hurts_and_dont_pretrain_name_the_same_target_when_predictions_are_right() -> None:
    centres = {"a": -6.0, "b": 4.0, "c": 2.0, "d": 6.0, "e": 0.0}  # every source of a hurts
    folds = {t: {s: c + np.array([-1.0, 1.0]) * 0.1 * (j + 1) + 2.0 * (j - 1.5)
                 for j, s in enumerate(x for x in centres if x != t)} for t, c in centres.items()}
    gains = mean_gains(folds)
    assert every_source_hurts(gains) == ["a"]
    rep = recommend_report({"m": gains}, folds, {}, dict.fromkeys(centres, 1.0), seed=0, n_boot=20)
    assert rep["every_source_hurts"] == ["a"] and rep["dont_pretrain"] == ["a"]
    assert rep["targets"]["a"]["call"] == "scratch" and rep["targets"]["b"]["call"] == "pretrain"
    assert rep["targets"]["b"]["recommended"] == max(gains["b"], key=gains["b"].get)
