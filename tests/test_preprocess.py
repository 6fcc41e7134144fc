import json

import numpy as np
import pandas as pd

from tasksim_ray.data.preprocess import filter_correlated, split_molecules


def test_correlated_targets_dropped_in_column_order() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    c = rng.normal(size=500)
    labels = pd.DataFrame({
        "a": a,
        "b": 2 * a + 0.05 * rng.normal(size=500),   # |r| ~ 1 with a: dropped (a came first)
        "c": c,
        "d": -c + 0.01 * rng.normal(size=500),      # r ~ -1 with c: dropped, sign does not matter
        "e": 0.5 * a + rng.normal(size=500),         # |r| ~ 0.45 with a: kept
    })
    labels.loc[:20, "e"] = np.nan                     # pairwise-complete correlations
    kept, dropped = filter_correlated(labels, 0.8)
    assert kept == ["a", "c", "e"]
    assert [(d.name, d.because_of) for d in dropped] == [("b", "a"), ("d", "c")]
    assert dropped[1].pearson_r < -0.99
    # reversing the order keeps b instead of a: the order rule decides, not the names
    kept_rev, _ = filter_correlated(labels[["b", "a", "c"]], 0.8)
    assert kept_rev == ["b", "c"]


def test_split_is_a_seeded_partition_with_fold_permutations() -> None:
    s = split_molecules(1000, (0.8, 0.1, 0.1), 5, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (800, 100, 100)
    everything = np.concatenate([s.train, s.val, s.test])
    assert np.array_equal(np.sort(everything), np.arange(1000))
    assert s.folds.shape == (5, 800)
    for fold in s.folds:
        assert np.array_equal(np.sort(fold), s.train)
    assert not np.array_equal(s.folds[0], s.folds[1])
    again = split_molecules(1000, (0.8, 0.1, 0.1), 5, seed=3)
    assert np.array_equal(again.test, s.test) and np.array_equal(again.folds, s.folds)
    assert not np.array_equal(split_molecules(1000, (0.8, 0.1, 0.1), 5, seed=4).test, s.test)


def test_a_given_split_is_the_shared_split_of_every_study(tmp_path) -> None:
    """Published per-file splits of a crystal folder combine into the one split the learning-curve
    studies use; two tasks of one file that disagree are refused in one line."""
    from pathlib import Path

    import pytest

    from tasksim_ray.config import DataConfig, SplitConfig
    from tasksim_ray.data.preprocess import given_split
    from tasksim_ray.data.sources import load_tasks
    from tasksim_ray.errors import TasksimError

    data = Path(__file__).parent / "data" / "crystals" / "moe_study"
    table = load_tasks(DataConfig(source="crystals", path=str(data / "moe_tasks")))
    published = SplitConfig(kind="published", path=str(data / "moe_splits"))
    split = given_split(published, table, n_folds=2, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (32, 12, 12)  # 16/6/6 per file
    assert not (set(split.train) & set(split.val)) and not (set(split.val) & set(split.test))
    assert split.folds.shape == (2, 32) and sorted(split.folds[1]) == split.train.tolist()
    # the piezo file's raw column split another way than its log column: one row, two parts
    doc = json.loads(next((data / "moe_splits").glob("*seed0*.json")).read_text())
    train, val, test = doc["piezoelectric_tensor"]
    doc["swapped"] = [test + val, train[:3], train[3:]]
    (tmp_path / "split_seed0.json").write_text(json.dumps(doc))
    clash = SplitConfig(kind="published", path=str(tmp_path), keys={"piezoelectric_tensor": "swapped"})
    with pytest.raises(TasksimError, match=r"data.split: row \d+ is \w+ for task '.*' but \w+ for '.*'"):
        given_split(clash, table, n_folds=1, seed=0)
