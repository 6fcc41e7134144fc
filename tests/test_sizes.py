"""No silent shrink, no silent default (``tasksim_ray.data.sizes``' rule), through the CLI: a size the
data cannot meet is a warning naming the key, the asked and the used number, or, where the study's
results are labelled with it, a one-line error before any model trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from tasksim_ray.cli import app

from .conftest import TINY_CONFIG, TINY_DATA


def _invoke(verb: str, workdir: Path, *sets: str) -> tuple[int, list[str]]:
    args = [verb, str(TINY_CONFIG), "--set", f"workdir={workdir}"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def test_a_training_cap_beyond_the_data_is_a_warning_with_asked_and_used(tmp_path: Path) -> None:
    code, err = _invoke("featurize", tmp_path / "w", "train.n_train=100000", "train.n_val=5000")
    assert code == 0, err
    assert len(err) == 2 and all(line.startswith("warning: ") for line in err), err
    assert "train.n_train: asked for 100,000 labelled training molecules per task" in err[0]
    assert "using 480 (mu), 480 (alpha)" in err[0]
    assert "train.n_val: asked for 5,000" in err[1] and "using 60 (mu)" in err[1]


def test_caps_the_data_meets_and_default_caps_say_nothing(tmp_path: Path) -> None:
    code, err = _invoke("featurize", tmp_path / "w", "train.n_train=100")
    assert code == 0 and err == [], err


def test_a_probe_size_beyond_the_test_split_is_told_before_training(tmp_path: Path) -> None:
    # probe.size is checked when the probe set is drawn, before training: here the run then stops on
    # another error (too few labelled probes for LogME), so nothing trains and the test takes seconds
    frame = pd.read_csv(TINY_DATA)
    frame.loc[frame.index[12:], "homo"] = np.nan
    frame.to_csv(tmp_path / "data.csv", index=False)
    code, err = _invoke("run", tmp_path / "w", "probe.size=100000", f"data.path={tmp_path / 'data.csv'}",
                        "data.targets=[mu, alpha, homo]")
    assert code == 2
    assert "warning: probe.size: asked for 100,000 probes (test split), the data has fewer: using 60" in err, err
    assert err[-1].startswith("error: metric 'logme'")
    assert not (tmp_path / "w" / "artifacts" / "models").exists()


def test_study_sizes_are_checked_before_any_model_trains_and_the_default_study_is_named(tmp_path: Path) -> None:
    code, err = _invoke("study", tmp_path / "w", "transfer.sizes=[30, 1000]")
    assert code == 2, err
    assert err[0] == ("warning: transfer.studies is not set: running the default studies matrix, subset, moe "
                      "(name them in transfer.studies to choose)")
    assert len(err) == 2 and err[1].startswith("error: transfer.sizes: asks for 1,000 labelled training molecules "
                                               "per target and fold; the data has 480 (mu fold 0)"), err
    assert not (tmp_path / "w" / "artifacts" / "models").exists()


def test_study_caps_beyond_the_data_are_warnings_before_the_sizes_error(tmp_path: Path) -> None:
    code, err = _invoke("study", tmp_path / "w", "transfer.studies=[moe]", "transfer.n_test=5000",
                        "transfer.moe.k=9", "transfer.sizes=[30, 1000]")
    assert code == 2 and len(err) == 3, err
    assert err[0].startswith("warning: transfer.n_test: asked for 5,000 labelled test molecules per target, "
                             "the data has fewer: using 60 (mu), 60 (alpha), 60 (homo)"), err
    assert err[1] == ("warning: transfer.moe.k: asked for 9 experts (the other tasks' models) per target, the data "
                      "has fewer: using 3"), err
    assert err[2].startswith("error: transfer.sizes: asks for 1,000")
    assert not (tmp_path / "w" / "artifacts" / "models").exists()
