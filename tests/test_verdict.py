"""Verdicts against a paper by the stated rule: constructed cells through each of the three outcomes,
paired by seed, Welch's without per-seed values, trends, and the side-by-side table's verdict column."""

from __future__ import annotations

import numpy as np
import pytest

from tasksim_ray.data.transforms import LabelTransform
from tasksim_ray.papers import lookup
from tasksim_ray.papers.compare import Measured, beats, compare
from tasksim_ray.papers.verdict import all_of, better, outcome, paired, trend, welch


def test_the_rule_on_intervals() -> None:
    assert outcome((0.1, 2.0)) == "agrees"
    assert outcome((-2.0, -0.1)) == "disagrees"
    assert outcome((-0.1, 2.0)) == "not resolved"
    assert outcome(None) == "not resolved"


def test_paired_cells_through_each_outcome() -> None:
    scratch = [0.30, 0.32, 0.31, 0.29, 0.33]  # MAE, lower is better; the paper: pretrained beats scratch
    assert better("PT beats scratch", [s - 0.05 for s in scratch], scratch, False).outcome == "agrees"
    assert better("PT beats scratch", [s + 0.05 for s in scratch], scratch, False).outcome == "disagrees"
    mixed = [s + d for s, d in zip(scratch, [-0.04, 0.05, -0.03, 0.04, 0.0])]
    v = better("PT beats scratch", mixed, scratch, False)
    assert v.outcome == "not resolved" and v.ci[0] < 0 < v.ci[1]
    # "agree: yes" by the mean alone, but an interval containing 0: not resolved
    lean = [s + d for s, d in zip(scratch, [-0.05, 0.03, -0.04, 0.02, -0.01])]
    v = better("PT beats scratch", lean, scratch, False)
    assert v.estimate > 0 and v.outcome == "not resolved"
    assert paired("one seed", [0.5]).outcome == "not resolved" and paired("one seed", [0.5]).ci is None


def test_welch_from_means_and_stds() -> None:
    assert welch("a beats b", (1.0, 0.1, 5), (0.5, 0.1, 5)).outcome == "agrees"
    assert welch("a beats b", (0.5, 0.1, 5), (1.0, 0.1, 5)).outcome == "disagrees"
    assert welch("a beats b", (1.0, 0.5, 5), (0.9, 0.5, 5)).outcome == "not resolved"
    assert welch("a beats b", (1.0, None, 5), (0.5, 0.1, 5)).outcome == "not resolved"


def test_trend_and_all_of() -> None:
    up = [[1.0, 1.1, 0.9], [2.0, 2.2, 1.9], [3.0, 3.1, 2.8]]
    assert trend("gain grows with PT size", up, increasing=True).outcome == "agrees"
    assert trend("gain falls with PT size", up, increasing=False).outcome == "disagrees"
    flat = [[1.0, 1.2, 0.8], [1.1, 0.9, 1.0], [3.0, 3.1, 2.8]]
    assert trend("gain grows with PT size", flat, increasing=True).outcome == "not resolved"
    a, d = paired("x", [1, 1.1, 0.9]), paired("y", [-1, -1.1, -0.9])
    assert all_of("both", [a, a]).outcome == "agrees" and all_of("both", [a, d]).outcome == "disagrees"


def test_side_by_side_rows_carry_the_verdict() -> None:
    table = lookup("001/table3")
    row = table.rows[0]
    best = table.best(row.key)[0]  # the paper's winner of the row
    other = next(c.key for c in table.columns if c.compete and c.key != best and table.cell(row.key, c.key))
    name = {c.key: c.ours or c.key for c in table.columns}
    hib = table.higher_is_better_for(row.key)
    good, bad = (2.0, 1.0) if hib else (1.0, 2.0)

    def ours(win: float, lose: float, spread: float) -> dict:
        seeds = [-spread, spread, 0.0, -spread / 2, spread / 2]
        return {(row.ours, name[best]): Measured(win, None, 5, tuple(win + s for s in seeds)),
                (row.ours, name[other]): Measured(lose, None, 5, tuple(lose + s for s in seeds[::-1]))}

    cases = {"agrees": ours(good, bad, 0.01), "disagrees": ours(bad, good, 0.01),
             "not resolved": ours(good, good + 1e-3 * (-1 if hib else 1), 0.5)}
    for outcome_name, results in cases.items():
        v = compare(table, results).rows[0].verdict
        assert v is not None and v.outcome == outcome_name, (outcome_name, v)
    md = compare(table, cases["agrees"]).to_markdown()
    assert "| agrees |" in md and "Verdicts: 1 agree, 0 disagree, 0 not resolved (of 1)" in md


@pytest.mark.parametrize("values", [None, (1.0,)])
def test_a_single_seed_is_never_a_verdict(values: tuple[float, ...] | None) -> None:
    a, b = Measured(1.0, None, 1, values), Measured(2.0, None, 1, values)
    assert beats("a beats b", a, b, False).outcome == "not resolved"


def _ptft_result() -> dict:
    per = {r: {"100": {"mean": m, "std": 0.01, "seeds": 3, "values": [m - 0.01, m, m + 0.01]}}
           for r, m in {"scratch": 0.5, "src": 0.45, "MPT all x4": 0.4}.items()}
    gains = {"src": [9.0, 10.0, 11.0], "MPT all x4": [19.0, 20.0, 21.0]}
    return {"sizes": [100], "size": 100, "mpt": "MPT all x4", "label_std": {"t": 2.0},
            "paper_transform": {"t": LabelTransform.fit(["standardise", "min-max"],
                                                        np.linspace(-3.0, 7.0, 11)).to_dict()},
            "per_target": {"t": {"ood": False, "per_size": per, "fold_gain": gains, "best_pairwise": "src"}}}


def test_ptft_rows_in_the_paper_units_and_its_verdicts() -> None:
    from tasksim_ray.transfer.studies.ptft import PTFTStudy, verdict_lines

    rows = PTFTStudy("ptft").paper_rows(_ptft_result())
    # paper 004: standardised, then min-max normalised = the MAE over the training label range
    assert rows["t@100/paper"]["mpt"]["mean"] == pytest.approx(0.04)
    assert rows["t@100/paper"]["scratch"]["std"] == pytest.approx(0.001)
    assert rows["t@100/std"]["mpt"]["mean"] == pytest.approx(0.2)
    assert rows["t@100/paper"]["mpt"]["values"] == pytest.approx([0.039, 0.04, 0.041])
    md = "\n".join(verdict_lines(_ptft_result()))
    assert "t: MPT beats scratch: **agrees**" in md and "t: PT-FT from src beats scratch: **agrees**" in md
    assert "MPT beats the best pairwise source (src, chosen on these folds): **agrees**" in md
    assert "Verdicts: 3 agree, 0 disagree, 0 not resolved (of 3)" in md


def test_budget_verdicts_pair_the_pick_with_all_others_and_the_mixture() -> None:
    from tasksim_ray.transfer.studies.budget import budget_verdicts, verdict_lines

    def target(picked: list[float], others: list[float], mix: list[float]) -> dict:
        return {"fold_gain": {"picked": picked, "all_others": others, "mixture": mix},
                "mixture": {"aligned": "a", "misaligned": "z", "labels": [20, 10], "gain": sum(mix) / len(mix)}}

    result = {"pick_metric": "csi", "split": [400, 10], "mixture_share": 1 / 3, "n_vs_e": {},
              "targets": {"t1": target([10, 11, 12], [1, 2, 3], [12, 13, 14]),
                          "t2": target([10, 10.5, 11], [2, 2.5, 3], [9, 11, 10.5]),
                          "t3": target([5, 6, 7], [1, 1, 2], [20, 19, 21])}}
    found = {v.claim: v for v in budget_verdicts(result)}
    assert found["t1: the csi pick alone beats all others under the same budget"].outcome == "agrees"
    assert found["t1: the csi pick alone beats aligned + misaligned"].outcome == "disagrees"
    assert found["t2: the csi pick alone beats aligned + misaligned"].outcome == "not resolved"
    assert found["over targets: the csi pick alone beats all others under the same budget"].outcome == "agrees"
    assert "Verdicts: 4 agree, 2 disagree, 2 not resolved (of 8)" in "\n".join(verdict_lines(result))
    # the page's old "agree: yes" for N vs E rested on an interval holding 0: by the rule, not resolved
    result["n_vs_e"] = {"100x40": {"csi pick": {"vs_first": {"mean": -2.1, "ci": [-6.5, 2.2]}, "n": 12}}}
    n_vs_e = budget_verdicts(result)[-1]
    assert n_vs_e.claim.startswith("over targets: fewer samples for more epochs (100x40) beats 400x10")
    assert n_vs_e.outcome == "not resolved" and n_vs_e.n == 12


@pytest.mark.parametrize("names", [["standardise"], ["min-max"], ["log"], ["log1p"], ["log", "standardise"],
                                   ["standardise", "min-max"], ["log1p", "standardise", "min-max"]])
def test_label_transforms_round_trip_and_are_fitted_on_training_labels(names: list[str]) -> None:
    train = np.array([0.5, 1.0, 2.0, 4.0, 8.0, np.nan])
    t = LabelTransform.fit(names, train)
    test = np.array([0.7, 3.0, 20.0])
    assert LabelTransform.from_dict(t.to_dict()).inverse(t.forward(test)) == pytest.approx(test)
    if names[-1] == "min-max":  # fitted on the training labels: they span [0, 1], a test label may not
        z = t.forward(train[:-1])
        assert z.min() == pytest.approx(0.0) and z.max() == pytest.approx(1.0) and t.forward(test)[-1] > 1


def test_the_paper_004_transform_scales_an_mae_by_the_training_range() -> None:
    t = LabelTransform.fit(["standardise", "min-max"], np.array([2.0, 4.0, 6.0, 12.0]))
    assert t.mae_scale() == pytest.approx(1 / 10)  # standardise then min-max = (y - min) / (max - min)
    pred, true = np.array([3.0, 5.0]), np.array([4.0, 7.0])
    assert np.abs(t.forward(pred) - t.forward(true)).mean() == pytest.approx(np.abs(pred - true).mean() * t.mae_scale())
    with pytest.raises(Exception, match="no single scale"):
        LabelTransform.fit(["log"], np.array([1.0, 2.0])).mae_scale()
