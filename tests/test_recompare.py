"""`tasksim recompare`: a published page's beside-the-paper tables rebuilt from its stored results by
today's verdict rule, on a real page of this repository (the MoE paper's Table 3 at three seeds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.transfer.recompare import replace_sections

from .conftest import REPO

PAGE = REPO / "results" / "moe_paper"


def test_sections_are_replaced_in_place_and_missing_ones_appended() -> None:
    md = "# Run\n\n## Methods\n\nrows\n\n## Beside the paper: 001/table3\n\nold | agree\n\n## Next\n\nkept\n"
    new = replace_sections(md, {"001/table3": "## Beside the paper: 001/table3\n\nnew | verdict",
                                "001/table2": "## Beside the paper: 001/table2\n\nsecond"})
    assert "old | agree" not in new and "new | verdict" in new
    assert new.index("## Methods") < new.index("new | verdict") < new.index("## Next") < new.index("second")
    assert "kept" in new and replace_sections(new, {"001/table3": "## Beside the paper: 001/table3\n\nnew | "
                                                    "verdict"}) == new


def test_a_page_gets_generated_verdicts_from_its_stored_seeds(tmp_path: Path) -> None:
    page = tmp_path / "page"
    shutil.copytree(PAGE, page)
    stored = json.loads((page / "methods.json").read_text())
    stored["methods"].pop("paper_comparison", None)  # as if the page had never been compared
    (page / "methods.json").write_text(json.dumps(stored))
    md = (page / "methods.md").read_text()
    (page / "methods.md").write_text(md[:md.index("## Beside the paper")])

    result = CliRunner().invoke(app, ["recompare", str(page)])
    assert result.exit_code == 0, result.output
    side = json.loads((page / "methods.json").read_text())["methods"]["paper_comparison"]["001/table3"]
    assert side["rule"].startswith("Verdict rule") and not side["verdicts"].endswith("(of 0)")
    expt = next(r for r in side["rows"] if r["task"] == "expt_eform")
    assert expt["cells"][0]["ours_mean"] == stored["methods"]["targets"]["expt_eform"]["STL"]["mean"]
    assert expt["verdict"]["n"] == 3 and expt["verdict"]["paired"]  # three split seeds, paired
    text = (page / "methods.md").read_text()
    assert "## Beside the paper: 001/table3" in text and "| verdict |" in text and "| agree |" not in text
    readme = (page / "README.md").read_text()
    assert readme.startswith("# Mixture of experts") and "recomputed from the stored results" in readme
    assert json.loads((page / "run.json").read_text())["recompared"]["what"].startswith("beside-the-paper")

    again = CliRunner().invoke(app, ["recompare", str(page)])  # idempotent: the same page again
    assert again.exit_code == 0 and (page / "methods.md").read_text() == text


def test_a_folder_that_is_not_a_page_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["recompare", str(tmp_path)])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "config.yaml" in lines[0], result.output
