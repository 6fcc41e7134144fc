"""The papers' tables as data: every YAML loads, every stored number is found in the paper's text
(read at test time from ../shared/papers, so no number is typed twice), the computed winners match
the paper's bold, and compare() gives the right Δ/σ, winners and agreement count. No Ray."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tasksim_ray.errors import TasksimError
from tasksim_ray.papers import (
    FACT_SETS,
    TABLES,
    Cell,
    FactSet,
    Measured,
    PaperTable,
    Row,
    compare,
    compare_facts,
    load,
    load_facts,
    load_file,
    lookup,
    papers,
    relative_improvement,
    side_by_side,
)
from tasksim_ray.papers.__main__ import render
from tasksim_ray.papers.store import tables_dir

REPO = Path(__file__).resolve().parents[1]
PAPERS = REPO.parent / "shared" / "papers"
needs_papers = pytest.mark.skipif(not PAPERS.is_dir(), reason="papers not at ../shared/papers")

_GREEK = {"theta": "θ", "lambda": "λ", "epsilon": "ε", "rho": "ρ", "sigma": "σ", "kappa": "κ", "mu": "μ"}


def normalize(text: str) -> str:
    """The paper's markdown-with-LaTeX as the stored quotes and cells write it (line by line)."""
    for old, new in (("\\pm", "±"), ("\\%", "%"), ("\\{", "{"), ("\\}", "}"), ("\\sim", "~")):
        text = text.replace(old, new)
    for tag in ("<b>", "</b>", "<math>", "</math>", "$"):
        text = text.replace(tag, "")
    text = re.sub(r"\\(?:operatorname|mathbf|text|mathbb|mathrm)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\(" + "|".join(_GREEK) + r")(?![A-Za-z])", lambda m: _GREEK[m[1]], text)
    return re.sub(r"[ \t]+", " ", text)


def _number(printed: str) -> str:
    """A printed value as a regex that does not match inside a longer number."""
    return r"(?<![\d.])" + re.escape(printed) + r"(?!\d)"


def _paper_lines(file: str) -> tuple[list[str], list[str]]:
    raw = (PAPERS / file).read_text(encoding="utf-8").splitlines()
    return raw, [normalize(line) for line in raw]


Group = tuple[str | None, Row | None, list[tuple[str, str, Cell | None]]]


def _groups(table: PaperTable) -> Iterator[Group]:
    """(label, row, [(row, column, cell)]) per printed line of the paper's table."""
    if table.printed_lines == "rows":
        for row in table.rows:
            yield None, row, [(row.key, c.key, table.cell(row.key, c.key)) for c in table.columns]
    else:
        for col in table.columns:
            yield col.printed_label, None, [(r.key, col.key, table.cell(r.key, col.key)) for r in table.rows]


def _find_line(lines: list[str], label: str | None, printed: list[str]) -> int:
    """The one line of the paper with these values in this order (and starting with ``label``)."""
    pattern = re.compile(".*?".join(_number(p) for p in printed))
    hits = [i for i, line in enumerate(lines)
            if pattern.search(line) and (label is None or line.strip().startswith(label))]
    assert len(hits) == 1, f"{printed} (label {label}) on {len(hits)} lines of the paper"
    return hits[0]


def test_every_yaml_loads_and_the_registry_lists_it() -> None:
    loaded = papers()
    assert [p.file[:3] for p in loaded] == ["000", "001", "002", "003", "004"]
    assert {"001/table1", "001/table2", "001/table3", "001/table4", "001/table5", "003/table1",
            "004/table1_r2", "004/table1_mae"} <= set(TABLES)
    assert set(FACT_SETS) == {f"00{i}/facts" for i in range(5)}
    assert len(load("001/table3").rows) == 19
    with pytest.raises(TasksimError, match="unknown paper table '001/table9'"):
        load("001/table9")
    with pytest.raises(TasksimError, match="use load_facts"):
        load("000/facts")


def test_each_table_has_a_cell_per_row_and_column() -> None:
    for table_id in TABLES:
        t = load(table_id)
        assert len(t.cells) == len(t.rows) * len(t.columns), table_id
        assert set(t.cells) == {(r.key, c.key) for r in t.rows for c in t.columns}, table_id
        assert any(c is not None for c in t.cells.values()), table_id


def test_task_names_are_the_loaders_names() -> None:
    """Every row's task (and substitute) is a name the loaders give the shared data."""
    from tasksim_ray.data.crystal_files import KNOWN_FILES
    from tasksim_ray.data.molecules import QM9_TARGETS

    names = set(QM9_TARGETS) | {a for k in KNOWN_FILES.values() for a in k.aliases.values()}
    columns = {c for k in KNOWN_FILES.values() for c in k.units}  # unaliased columns keep their name
    for table_id in TABLES:
        for row in load(table_id).rows:
            assert row.ours is None or row.ours in names, (table_id, row.ours)
            assert row.substitute is None or row.substitute in names | columns, (table_id, row.substitute)
    assert set(load_facts("000/facts").get("diverse_subset").ours) <= names
    assert set(load_facts("004/facts").get("datasets").ours) - {None} <= names
    assert sum(r.ours is not None for r in load("001/table3").rows) == 12  # the twelve MoE task files


@needs_papers
def test_every_cell_is_printed_in_the_paper() -> None:
    checked = 0
    for table_id in TABLES:
        t = load(table_id)
        _, lines = _paper_lines(t.paper)
        text = "\n".join(lines)
        for label, row, cells in _groups(t):
            quoted = [c for _, _, c in cells if c is not None and c.quote]
            for cell in quoted:
                assert cell.quote in text, (table_id, cell.quote)
                assert re.search(_number(cell.printed), cell.quote), (table_id, cell.printed)
            unquoted = [c.printed for _, _, c in cells if c is not None and not c.quote]
            if unquoted:
                assert t.source == "table", (table_id, unquoted)
                line = lines[_find_line(lines, label, unquoted)]
                if table_id == "001/table3" and row is not None:  # the only table printing row sizes
                    assert f"({row.size:,})" in line, (row.key, line)
            checked += len(quoted) + len(unquoted)
    assert checked == sum(c is not None for i in TABLES for c in load(i).cells.values())


@needs_papers
def test_every_fact_is_quoted_from_the_paper() -> None:
    for facts_id in FACT_SETS:
        facts = load_facts(facts_id)
        text = "\n".join(_paper_lines(facts.paper)[1])
        for fact in facts.facts:
            assert fact.quote and fact.quote in text, (facts_id, fact.key, fact.quote)
            if fact.printed is not None:
                assert re.search(_number(fact.printed), fact.quote), (facts_id, fact.key)


@needs_papers
@pytest.mark.parametrize("table_id", ["001/table2", "001/table3"])
def test_computed_best_is_the_papers_bold(table_id: str) -> None:
    t = load(table_id)
    raw, lines = _paper_lines(t.paper)
    bold, best = set(), {(r.key, c) for r in t.rows for c in t.best(r.key)}
    for label, _, cells in _groups(t):
        i = _find_line(lines, label, [c.printed for _, _, c in cells if c is not None])
        marked = {normalize(m) for m in re.findall(r"<b>(.*?)</b>", raw[i])}
        bold |= {(r, c) for r, c, cell in cells if cell is not None and normalize(f"<b>{cell.printed}</b>") in marked
                 or cell is not None and any(re.fullmatch(_number(cell.printed) + r"(\^\d+)?", m) for m in marked)}
    assert bold and bold == best


def test_paper_001_counts_follow_from_table3() -> None:
    t, facts = load("001/table3"), load_facts("001/facts")
    mean = {(r.key, c.key): _mean(t, r.key, c.key) for r in t.rows for c in t.columns}
    rows = [r.key for r in t.rows]
    negative = [r for r in rows if mean[r, "tl_mp_ef"] > mean[r, "stl"]]
    counts = {"moe_beats_tl": sum(mean[r, "moe"] < mean[r, "tl_mp_ef"] for r in rows),
              "moe_best": sum(t.best(r) == ("moe",) for r in rows),
              "tl_worse_than_stl": len(negative),
              "moe_best_where_tl_negative": sum(t.best(r) == ("moe",) for r in negative),
              "moe_beats_stl": sum(mean[r, "moe"] < mean[r, "stl"] for r in rows)}
    for key, count in counts.items():
        assert facts.get(key).value == count, key
    assert facts.get("moe_best_where_tl_negative").out_of == len(negative)


def _mean(table: PaperTable, row: str, column: str) -> float:
    cell = table.cell(row, column)
    assert cell is not None, (table.id, row, column)
    return cell.mean


def _printed(facts_id: str, key: str) -> str:
    printed = load_facts(facts_id).get(key).printed
    assert printed is not None, key
    return printed


def _within_print(value: float, printed: str) -> bool:
    decimals = len(printed.strip("~%").partition(".")[2])
    return abs(value - float(printed.strip("~%"))) <= 0.5 * 10 ** -decimals + 1e-9


def test_paper_003_relative_improvements_follow_from_the_cells() -> None:
    t = load("003/table1")
    derived = [c for c in t.columns if c.derived]
    found = 0
    for row in t.rows:
        for col in derived:
            cell, d = t.cell(row.key, col.key), col.derived
            if cell is None:
                continue
            assert d is not None
            base, model = _mean(t, row.key, d.baseline), _mean(t, row.key, d.model)
            value = relative_improvement(base, model, t.higher_is_better_for(row.key))
            assert _within_print(value, cell.printed), (row.key, col.key, value, cell.printed)
            found += 1
    assert found == 7  # four RI vs MP-0 cells (one classification), three JMP-S vs MP-0


def test_paper_004_percentages_follow_from_its_tables() -> None:
    r2, mae, row = load("004/table1_r2"), load("004/table1_mae"), "jarvis_2d_gap"

    def rel(t: PaperTable, model: str, base: str) -> float:
        return relative_improvement(_mean(t, row, base), _mean(t, row, model), t.higher_is_better)

    assert _within_print(rel(r2, "mpt", "scratch"), _printed("004/facts", "ood_mpt_vs_scratch_r2"))
    assert _within_print(rel(mae, "mpt", "scratch"), _printed("004/facts", "ood_mpt_vs_scratch_mae"))
    best_size = ["fe_100k", "bg_50k", "ph_1256", "gv_10987", "ebg_2481"]
    for t, key in ((r2, "ood_mpt_vs_pairwise_r2"), (mae, "ood_mpt_vs_pairwise_mae")):
        assert _within_print(statistics.mean(rel(t, "mpt", b) for b in best_size), _printed("004/facts", key)), key
    text = load("004/text_r2")
    gain = relative_improvement(_mean(text, "fe200", "pt_bg"), _mean(text, "fe500", "pt_bg"), True)
    assert _within_print(gain, _printed("004/facts", "r2_gain_bg_fe_200_500"))


def test_compare_gives_delta_sigma_winners_and_agreement() -> None:
    t = load("001/table3")  # expt_ef: 0.114 ± 0.006 | 0.102 ± 0.015 | 0.0908 ± 0.0142 (MoE best)
    ours = {("expt_eform", "scratch"): (0.120, 0.010, 3), ("expt_eform", "finetune"): (0.099, 0.005, 3),
            ("expt_eform", "moe"): (0.110, 0.02, 3),  # TL wins ours: disagrees
            ("jarvis_2d_exfoliation", "scratch"): Measured(62.0, 13.6, 5),
            ("jarvis_2d_exfoliation", "moe"): Measured(50.0, 9.0, 5),  # MoE wins both: agrees
            ("mp_poly_total", "moe"): (5.0, 1.0, 3),  # one column only: not compared
            ("my_extra_task", "moe"): (1.0, 0.1, 3)}
    cmp = compare(t, ours)
    row = {r.row.key: r for r in cmp.rows}
    stl = next(c for c in row["expt_ef"].cells if c.column == "stl")
    assert stl.delta_sigma == pytest.approx((0.120 - 0.114) / 0.006)
    assert stl.relative == pytest.approx((0.120 - 0.114) / 0.114)
    assert row["expt_ef"].our_winner == ("tl_mp_ef",) and row["expt_ef"].paper_winner == ("moe",)
    assert row["expt_ef"].agrees is False
    assert row["exfol"].paper_winner == ("moe",) and row["exfol"].agrees is True  # among the columns we ran
    assert row["eps_poly"].agrees is None and row["phdos"].task is None
    assert (cmp.agreement, cmp.compared) == (1, 2)
    assert cmp.omitted == ("my_extra_task",)
    md = cmp.to_markdown()
    assert "Same winner by means: 1 of 2 rows compared (16 of 19 rows not run)." in md
    assert "| PhonDOS peak | not run |" in md and "my_extra_task" not in md.split("Not in")[0]
    assert "| 0.120 ± 0.010 | 0.114 ± 0.006 | +1.00 |" in md  # ours at the paper's decimals


def test_compare_aliases_methods_substitutes_and_derived_columns() -> None:
    t = load("001/table3")
    nested = {"my_enthalpies": {"stl": {"mean": 0.2, "std": 0.01, "seeds": 5},
                                "mine": {"mean": 0.1, "std": 0.01, "seeds": 5}, "units": "eV/atom"},
              "gap tbmbj": {"moe": {"mean": 1.0, "std": 0.2, "n": 5}, "scratch": {"mean": 1.5, "std": 0.2}}}
    cmp = compare(t, nested, aliases={"expt_ef": "my_enthalpies"}, methods={"stl": "stl", "moe": "mine"})
    row = {r.row.key: r for r in cmp.rows}
    assert row["expt_ef"].task == "my_enthalpies" and row["expt_ef"].agrees is True
    assert row["2d_eg_tbmbj"].task is None  # "moe" now means column "mine": the substitute has neither
    cmp = compare(t, nested)
    sub = {r.row.key: r for r in cmp.rows}["2d_eg_tbmbj"]
    assert sub.task == "gap tbmbj" and sub.substitute and sub.agrees is True
    assert "gap tbmbj (substitute)" in cmp.to_markdown()
    with pytest.raises(TasksimError, match="aliases name rows"):
        compare(t, nested, aliases={"nope": "x"})
    with pytest.raises(TasksimError, match="methods name columns"):
        compare(t, nested, methods={"nope": "x"})

    t = load("003/table1")  # our scratch vs fine-tuned: the relative improvement is derived from them
    cmp = compare(t, {("my_gap", "scratch"): (0.9, 0.1, 5), ("my_gap", "mace_mp0"): (0.3, 0.05, 5)},
                  aliases={"mp_gap": "my_gap"})
    gap = {r.row.key: r for r in cmp.rows}["mp_gap"]
    derived = next(c for c in gap.cells if c.column == "rel_ri_mp0")
    assert derived.ours is not None and derived.ours.mean == pytest.approx(100 * (0.9 - 0.3) / 0.9)
    assert derived.sign_agrees is True and cmp.sign_agreement == (1, 1)
    assert gap.paper_winner == ("mace_mp0",) and gap.agrees is True  # MB and JMP-S do not compete


def test_side_by_side_gives_markdown_and_json() -> None:
    md, data = side_by_side("004/table1_mae", {("jarvis_2d_gap_opt", "scratch"): (0.15, 0.01, 3),
                                               ("jarvis_2d_gap_opt", "mpt"): (0.14, 0.01, 3)})
    assert json.loads(json.dumps(data))["rows"][0]["task"] == "jarvis_2d_gap_opt"
    assert data["winner_agreement"] == 1 and "(substitute)" in md
    md, data = side_by_side("000/facts", {"kept_tasks": 10, "diverse_subset": ["cv", "A", "homo"],
                                          "corr_threshold": 0.8})
    rows = {r["key"]: r for r in json.loads(json.dumps(data))["rows"]}
    assert rows["kept_tasks"]["agrees"] is False and rows["diverse_subset"]["agrees"] is True
    assert data["agreement"] == 2 and data["compared"] == 3 and "| kept_tasks | 9 | 10 | no |" in md
    with pytest.raises(TasksimError, match="no facts"):
        compare_facts(load_facts("000/facts"), {"not_a_fact": 1})
    facts = lookup("001/facts")
    assert isinstance(facts, FactSet) and facts.get("k").value == 18


def _broken(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    data = yaml.safe_load((tables_dir() / "001_moe.yaml").read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "001_moe.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["tables"][3]["rows"][0]["cells"].pop("moe"),
     r"001_moe.yaml: paper.tables\[3\].rows\[expt_ef\].cells.moe: missing"),
    (lambda d: d["tables"][3]["rows"][0]["cells"].update(moe="0.09 +- 0.01"),
     r"001_moe.yaml: paper.tables\[3\].rows\[expt_ef\].cells.moe: '0.09 \+- 0.01' is not"),
    (lambda d: d["tables"][0].update(higher_is_better="no"),
     r"001_moe.yaml: paper.tables\[0\].higher_is_better: expected bool, got str"),
    (lambda d: d["tables"][0]["columns"][0].update(colour="red"),
     r"001_moe.yaml: paper.tables\[0\].columns\[0\].colour: unknown key"),
    (lambda d: d["tables"][0]["rows"][0].pop("ours"), r"001_moe.yaml: paper.tables\[0\].rows\[0\].ours: missing"),
])
def test_malformed_yaml_is_a_one_line_error_naming_the_key(tmp_path: Path, edit: Callable[[dict], None],
                                                           message: str) -> None:
    with pytest.raises(TasksimError, match=message) as err:
        load_file(_broken(tmp_path, edit))
    assert "\n" not in str(err.value)


def test_unreadable_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    shutil.copy(tables_dir() / "000_rsa.yaml", path)
    path.write_text(path.read_text(encoding="utf-8") + "\n  - [unclosed\n", encoding="utf-8")
    with pytest.raises(TasksimError, match=r"^bad.yaml: not readable YAML") as err:
        load_file(path)
    assert "\n" not in str(err.value)


def test_the_committed_listing_is_current() -> None:
    listing = REPO / "results" / "papers" / "README.md"
    assert listing.read_text(encoding="utf-8") == render(), "rerun: python -m tasksim_ray.papers --write " \
                                                            "results/papers/README.md"
