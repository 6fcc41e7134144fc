"""What `tasksim submit` sends to a cluster: an allow-list of the project, never secrets, and a job
command whose arguments cannot be split or chained."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.submit import entrypoint, stage_upload, upload_files

SECRETS = [".env", "credentials.json", "id_rsa", ".aws/credentials", "secrets/token.txt", ".ray/auth_token",
           "shared/data/big.csv", "configs/.env", "tasksim_ray/id_rsa", "notes/private.md", "runs/x/state.pt"]


def _project(root: Path) -> Path:
    for rel in ["tasksim_ray/__init__.py", "tasksim_ray/cli/app.py", "jobs/run_pipeline.py", "configs/demo.yaml",
                "pyproject.toml", "tests/data/mols.csv", *SECRETS]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    (root / "configs" / "mine.yaml").write_text("data: {source: table, path: tests/data/mols.csv}\n")
    return root


def test_upload_is_the_allow_list_plus_the_configs_data(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    files = upload_files(project, "configs/mine.yaml")
    assert files == ["configs/demo.yaml", "configs/mine.yaml", "jobs/run_pipeline.py", "pyproject.toml",
                     "tasksim_ray/__init__.py", "tasksim_ray/cli/app.py", "tests/data/mols.csv"]
    assert not set(SECRETS) & set(files)
    staged = stage_upload(project, files)
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == files


def test_config_outside_the_project_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    (tmp_path / "other.yaml").write_text("name: x\n")
    with pytest.raises(TasksimError, match="inside the project"):
        upload_files(project, "../other.yaml")


def test_job_command_quotes_every_argument() -> None:
    cmd = entrypoint("run_pipeline", "cfg.yaml; touch X", ["--set", "name=a b"])
    assert shlex.split(cmd) == ["python", "jobs/run_pipeline.py", "cfg.yaml; touch X", "--set", "name=a b"]


@pytest.mark.parametrize(("yaml_text", "args", "kept"), [
    ("workdir: runs/x\n", [], False),
    ("name: x\n", [], False),  # the default workdir is relative too
    ("workdir: runs/x\n", ["--set", "workdir=/shared/runs/x"], True),
    ("workdir: runs/x\n", ["--set=workdir=~/runs/x"], True),
    ("workdir: /shared/x\n", ["--set", "workdir=rel"], False),
    ("workdir: runs/x\nstorage:\n  uri: s3://bucket/x\n", [], True),
    ("workdir: runs/x\n", ["--set", "storage.uri=gs://bucket/x"], True),
])
def test_a_job_whose_results_would_be_deleted_is_refused(tmp_path: Path, yaml_text: str, args: list[str],
                                                         kept: bool) -> None:
    from tasksim_ray.infra.submit import check_results_kept

    (tmp_path / "c.yaml").write_text(yaml_text)
    if kept:
        check_results_kept(tmp_path / "c.yaml", args)
    else:
        with pytest.raises(TasksimError, match=r"is relative, so a submitted job would write its report .* set "
                                               r"storage.uri, or an absolute workdir"):
            check_results_kept(tmp_path / "c.yaml", args)
