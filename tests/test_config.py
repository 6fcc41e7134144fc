import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydantic import Field

from tasksim_ray.cli.pipeline import demo_config
from tasksim_ray.config import load_config
from tasksim_ray.config.base import Strict
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import STUDIES, StudySpec

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
    ("tasks: [mu, alpha]\ntransfer:\n  ood: [gap]\n", "transfer.ood: ['gap'] are not among tasks"),
    ("transfer:\n  tasks: [mu, alpha]\n  ood: [gap]\n", "transfer.ood: ['gap'] are not in transfer.tasks"),
    ("transfer:\n  budgt:\n    total: 1000\n", "unknown key 'transfer.budgt'"),
    ("transfer:\n  subset:\n    armz: [budget]\n", "unknown key 'transfer.subset.armz'"),
    ("transfer:\n  ptft:\n    pt_epochs: 0\n", "key 'transfer.ptft.pt_epochs'"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TasksimError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "c.yaml") in str(info.value)
    assert "\n" not in str(info.value)


class ToyOptions(Strict):
    """A toy study's own options."""

    repeats: int = Field(default=3, ge=1)
    """How often the toy study repeats."""


def test_a_study_registers_its_own_config_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study's options model in its registry line makes ``transfer.<study>`` a validated section, with no edit
    of ``config/transfer.py``; the built-in sections beside it keep working."""
    for table in ("_table", "_added"):  # the registration ends with the test
        monkeypatch.setattr(STUDIES, table, dict(getattr(STUDIES, table)))
    STUDIES.register("toy", StudySpec("tasksim_ray.transfer.study:Study", None, "A toy.", config=ToyOptions))
    data = "data:\n  source: qm9pack\n"
    assert load_config(_write(tmp_path, data)).transfer.toy == ToyOptions()
    cfg = load_config(_write(tmp_path, data + "transfer:\n  toy:\n    repeats: 5\n  budget:\n    total: 600\n"))
    assert (cfg.transfer.toy.repeats, cfg.transfer.budget.total) == (5, 600)
    for text, message in [("toy:\n    repats: 5", "unknown key 'transfer.toy.repats'"),
                          ("toy:\n    repeats: 0", "key 'transfer.toy.repeats': Input should be greater")]:
        with pytest.raises(TasksimError, match=re.escape(message)):
            load_config(_write(tmp_path, f"{data}transfer:\n  {text}\n"))
    monkeypatch.undo()
    with pytest.raises(TasksimError, match=re.escape("unknown key 'transfer.toy'")):
        load_config(_write(tmp_path, data + "transfer:\n  toy:\n    repeats: 5\n"))


def test_overrides_merge_dotted_keys(tmp_path: Path) -> None:
    text = "data:\n  source: qm9pack\ntrain:\n  max_epochs: 3\n"
    cfg = load_config(_write(tmp_path, text), {"train.patience": 2, "seed": 7})
    assert (cfg.train.max_epochs, cfg.train.patience, cfg.seed) == (3, 2, 7)


def test_unknown_registry_names_are_one_line_errors_listing_the_registered(tmp_path: Path) -> None:
    for text, kind, known in [("model:\n  backbone: gin\n", "backbone 'gin'", "alignn, cgcnn, chgnet, dmpnn, mace"),
                              ("similarity:\n  metrics: [rsa, kl]\n", "metric 'kl'", "cka, cmd, csi, csi_graph, logme, rsa"),
                              ("data:\n  source: zinc\n  path: x.csv\n", "source 'zinc'", "moleculenet, qm9pack"),
                              ("transfer:\n  foundation: [mace-mp]\n", "foundation model 'mace-mp'", "chgnet")]:
        with pytest.raises(TasksimError) as info:
            load_config(_write(tmp_path, text))
        assert f"unknown {kind}; registered: " in str(info.value) and known in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("similarity:\n  metrics: [cmd]\nselection:\n  metric: cmd\n", "'cmd' is not a similarity"),
    ("data:\n  targets: [mu, alpha]\nsimilarity:\n  dataset_features:\n    model: gap\n",
     "'gap' is neither a task (mu, alpha) nor a registered foundation model (chgnet, sevennet0)"),
])
def test_selection_and_csi_names_come_from_the_registries(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TasksimError, match=re.escape(message)):
        load_config(_write(tmp_path, text))


def test_demo_config_resolves_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with demo_config() as path:
        assert load_config(path).name == "qm9-demo"
        assert (REPO / "configs" / "demo.yaml").resolve() == path.resolve()  # one file, linked from configs/


def test_demo_config_ships_in_the_wheel(tmp_path: Path) -> None:
    """Build the wheel (no install), unpack it and resolve the demo config from it, outside the repository."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "tasksim_ray", src / "tasksim_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], cwd=src, check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("from tasksim_ray.cli.pipeline import demo_config; from tasksim_ray.config import load_config\n"
            "with demo_config() as p: print(p, load_config(p).name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}).stdout
    assert out.startswith(str(tmp_path / "site")) and out.strip().endswith("qm9-demo")


@pytest.mark.parametrize("page", sorted(p.parent.name for p in (REPO / "results").glob("*/config.yaml")))
def test_every_recorded_config_reloads(page: str) -> None:
    """A results page's config.yaml (the resolved config, every default written out) loads again, so the
    page's run can be repeated from it."""
    cfg = load_config(REPO / "results" / page / "config.yaml")
    assert cfg.name
