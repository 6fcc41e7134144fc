"""A run as a user sees it through a log file and a browser.

``tasksim run`` on the tiny config with stdout redirected to a file (as ``make demo > log`` or a
batch job): the log shows a line per finished model with counts and an ETA, none of Ray's start-up
notices a user cannot act on, and where the report page is. The page, ``report/index.html``, is then
opened in a real headless Chromium (Debian's package, driven by Playwright): it loads with no
console error, every image decodes, and a screenshot is saved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasksim_ray.infra.html import write_html_report

from .conftest import REPO, TINY_CONFIG

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# a real study report kept in the repository (tables, JSON, figures of the ALIGNN PT/FT study)
STUDY_REPORT = REPO / "results" / "alignn_ptft"


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny pipeline through the CLI, stdout and stderr to a file; returns (workdir, log)."""
    workdir = tmp_path_factory.mktemp("logged")
    log = workdir / "run.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "COLUMNS")}
    cmd = [sys.executable, "-c", "from tasksim_ray.cli import main; main()", "run", str(TINY_CONFIG),
           "--set", f"workdir={workdir / 'run'}", "--set", "train.max_epochs=2", "--set", "similarity.metrics=[rsa, cka]",
           "--set", "similarity.bootstrap.n_boot=20"]
    with log.open("w") as out:
        # a group-shared folder's umask: every file the run writes must get 0664, atomically written or not
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              preexec_fn=lambda: os.umask(0o002))
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return workdir / "run", text


def test_log_shows_progress_per_model(logged_run: tuple[Path, str]) -> None:
    workdir, log = logged_run
    lines = re.findall(r"^\[pretrain\] (\d+)/(\d+) (\S+) done(?: \(\d+ cached\))? (\S+?)(?:, ETA (\S+))?$", log,
                       flags=re.M)
    tasks = {t for _, _, t, _, _ in lines}
    assert len(lines) == 4 and tasks == {"mu", "alpha", "homo", "lumo"}, log  # gap is dropped (r = 0.9 with lumo)
    assert [int(n) for n, *_ in lines] == [1, 2, 3, 4] and {int(total) for _, total, *_ in lines} == {4}
    assert all(eta for *_, eta in lines[:-1]) and not lines[-1][-1]  # an ETA until the last one
    assert not re.search(r"━+ \d+/\d+", log)  # no progress bar drawn into a file
    for notice in ("Token authentication is enabled for this", "Progress bars disabled"):
        assert notice not in log
    page = workdir / "report" / "index.html"
    assert f"Open in a browser: {page.resolve().as_uri()}" in log


def test_report_and_artifact_files_get_the_umask_mode(logged_run: tuple[Path, str]) -> None:
    workdir = logged_run[0]
    modes = {p.relative_to(workdir): p.stat().st_mode & 0o777 for p in workdir.rglob("*") if p.is_file()}
    assert oct((workdir / "report" / "index.html").stat().st_mode & 0o777) == oct(0o664)
    assert len(modes) > 40 and {oct(m) for m in modes.values()} == {oct(0o664)}, \
        sorted((str(p), oct(m)) for p, m in modes.items() if m != 0o664)[:5]


def test_report_page_is_self_contained(logged_run: tuple[Path, str]) -> None:
    report = logged_run[0] / "report"
    page = (report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list(report.glob("*.png"))) == 4
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # nothing loaded from a file or the network
    assert "<script" not in page and "Selected pretraining subset" in page and "bootstrap intervals" in page


def test_markdown_cannot_inject_html(tmp_path: Path) -> None:
    (tmp_path / "summary.md").write_text("# run\n\nTask <script>alert(1)</script> and <img src=x onerror=y>\n")
    page = write_html_report(tmp_path).read_text()
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_opens_in_a_browser(logged_run: tuple[Path, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = tmp_path / "report"
    shutil.copytree(logged_run[0] / "report", report)
    # a study's tables and figures, as the transfer report writes them (its README is the results page)
    shutil.copytree(STUDY_REPORT, report / "transfer", ignore=shutil.ignore_patterns("README.md"))
    page_path = write_html_report(report, "tasksim report: tiny + a study")
    n_png = len(list(report.rglob("*.png")))
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                    else problems.append(f"request: {r.url}"))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth])")
            sections = page.evaluate("Array.from(document.querySelectorAll('nav a'), a => a.textContent)")
            tables = page.locator("table").count()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(images) == n_png and all(done and width > 0 for _, done, width in images), images
    assert sections == ["run", "transfer"] and tables >= 5  # intervals, per-task, timings; the study's tables
    assert shot.stat().st_size > 10_000
