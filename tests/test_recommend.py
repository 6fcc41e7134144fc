"""The recommendation scores on constructed gain matrices: a perfect score recommends the best source
(hit rate 1, regret 0, tau 1), a reversed one the worst; the combined score never sees the held-out
target's gains; "don't pretrain" and the negative-transfer call follow the predicted gains."""

from __future__ import annotations

import numpy as np
import pytest

from tasksim_ray.transfer.recommend import (
    bootstrap,
    dont_pretrain,
    leave_one_target_out,
    mean_gains,
    negative_transfer,
    random_baseline,
    summarise,
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
