"""The docs site builds with warnings as errors (a broken link or anchor, or a config key without a
description, fails it), its generated references cover the code, and the README stays a README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import typer

from tasksim_ray.cli import app
from tasksim_ray.config import PipelineConfig

from .conftest import REPO


def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config_page = (site / "reference" / "configuration" / "index.html").read_text()
    for section, field in PipelineConfig.model_fields.items():  # every section and its keys, generated
        assert f"<code>{section}</code>" in config_page, section
        for key in getattr(field.annotation, "model_fields", {}):
            assert f'id="{section}"' in config_page and f"<code>{key}</code>" in config_page, f"{section}.{key}"
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for name in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        assert f"tasksim {name}" in cli_page, name
    for study in sorted((REPO / "results").glob("*/README.md")):
        assert (site / "results" / study.parent.name / "index.html").is_file(), study


def test_readme_is_short_and_links_every_result() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme
    results = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\(results/([^/)]+)/README\.md\)", results))
    assert linked == {p.parent.name for p in (REPO / "results").glob("*/README.md")}
