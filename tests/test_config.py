from pathlib import Path

import pytest

from tasksim_ray.config import load_config
from tasksim_ray.errors import TasksimError

from .conftest import REPO


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_validate() -> None:
    for path in (REPO / "configs").glob("*.yaml"):
        assert load_config(path).name


@pytest.mark.parametrize("text, message", [
    ("train:\n  max_epoch: 3\n", "unknown key 'train.max_epoch'"),
    ("train:\n  batch_size: many\n", "key 'train.batch_size'"),
    ("selection:\n  threshold: 3\n", "key 'selection.threshold'"),
    ("data:\n  source: table\n", "data.path is required"),
    ("train: [1, 2\n", "malformed YAML (line"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("transfer:\n  budget:\n    total: 1000\n    samples: 300\n", "budget 1000 is not divisible by samples 300"),
    ("transfer:\n  sizes: [300, 100]\n", "transfer.sizes must be increasing"),
    ("transfer:\n  finetune:\n    strategy: layers\n", "finetune.layers must list"),
    ("transfer:\n  variants:\n    x: {strategy: nope}\n", "variant 'x': key 'strategy'"),
    ("transfer:\n  strategy_pairs: [[mu, mu]]\n", "cannot be its own source"),
    ("transfer:\n  folds: 9\n", "exceeds preprocess.n_folds"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TasksimError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "c.yaml") in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_merge_dotted_keys(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "train:\n  max_epochs: 3\n"), {"train.patience": 2, "seed": 7})
    assert (cfg.train.max_epochs, cfg.train.patience, cfg.seed) == (3, 2, 7)
