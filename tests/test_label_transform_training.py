"""``train.label_transform`` in training: the labels are transformed on the training split, the model
learns in that space, every validation MAE is reported in task units (the transform inverted), the
fitted transform is stored with the model, and a label the transform cannot take is refused in one
line before any job runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.data.transforms import LabelTransform
from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.training.loop import FitOptions, fit, predict

from .conftest import TINY_CONFIG, TINY_DATA


def test_the_loop_trains_on_transformed_labels_and_reports_task_units() -> None:
    frame = pd.read_csv(TINY_DATA).head(80)
    graphs = [smiles_to_graph(s) for s in frame["smiles"]]
    y = frame["alpha"].to_numpy(float) ** 3  # a heavy right tail, as a log-scaled label would have
    train, val, y_train, y_val = graphs[:60], graphs[60:], y[:60], y[60:]
    transform = LabelTransform.fit(["log"], y_train)
    z = transform.forward(y_train)
    torch.manual_seed(0)
    model = DMPNN(hidden_dim=16, depth=2, ffn_hidden_dim=8)
    model.reset_head(1)
    result = fit(model, train, y_train, val, y_val, FitOptions(max_epochs=4, patience=4, batch_size=20, lr=1e-3),
                 seed=0, mean=float(z.mean()), std=float(z.std()), transform=transform)
    # the best weights are restored: their predictions, un-standardised and inverted, give the reported MAE
    pred = predict(model, val, 64, torch.device("cpu")).reshape(-1) * z.std() + z.mean()
    assert np.isclose(result.best_val_mae, np.mean(np.abs(transform.inverse(pred) - y_val)), rtol=1e-5)
    assert not np.isclose(result.best_val_mae, np.mean(np.abs(pred - np.log(y_val))), rtol=1e-2)  # not log units


def test_the_pipeline_stores_the_fitted_transform_with_each_model(tmp_path: Path) -> None:
    args = ["pretrain", str(TINY_CONFIG), "--set", f"workdir={tmp_path / 'w'}", "--set", "train.max_epochs=2",
            "--set", "train.label_transform=[log1p]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    configs = sorted((tmp_path / "w").rglob("config.json"))
    infos = [json.loads(p.read_text()) for p in configs if "label_transform" in p.read_text()]
    assert infos and all(i["label_transform"]["steps"][0]["step"] == "log1p" for i in infos)
    for info in infos:  # the MAE is in task units: on the scale of the task's labels, not of their logarithm
        labels = pd.read_csv(TINY_DATA)[info["task"]]
        assert info["metrics"]["best_val_mae"] > 0.05 * float(labels.std())


def test_a_label_the_transform_cannot_take_is_one_line_before_any_job(tmp_path: Path) -> None:
    args = ["pretrain", str(TINY_CONFIG), "--set", f"workdir={tmp_path / 'w'}", "--set", "data.targets=[homo, mu]",
            "--set", "train.label_transform=[log]"]
    result = CliRunner().invoke(app, args)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "train.label_transform, task 'homo'" in lines[0] and "positive" in lines[0]
    assert not list((tmp_path / "w").rglob("model.pt"))
