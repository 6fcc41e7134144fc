"""The five papers' tables and stated facts as data, and our results printed beside them.

Each paper this project implements (``shared/papers``) has one YAML file in ``tables/``: its tables
(cells copied as printed, tasks mapped to our task names) and the facts its text states (settings,
thresholds, counts, subsets). This package reads nothing else of tasksim_ray but its errors.

    from tasksim_ray.papers import TABLES, load, compare, side_by_side
    table = load("001/table3")                      # a validated PaperTable
    table.best("expt_ef")                           # ("moe",): computed from the means
    cmp = compare(table, {("expt_eform", "moe"): (0.095, 0.012, 5)})
    print(cmp.to_markdown()); cmp.agreement         # rows whose winner agrees
    md, data = side_by_side("001/table3", results)  # for a study report: markdown + JSON-able dict

``python -m tasksim_ray.papers --write results/papers/README.md`` regenerates the listing.
"""

from tasksim_ray.papers.compare import (
    CellComparison,
    Comparison,
    FactComparison,
    Measured,
    RowComparison,
    SideBySide,
    compare,
    compare_facts,
    normalize_results,
    side_by_side,
)
from tasksim_ray.papers.schema import (
    Cell,
    Column,
    Derived,
    Fact,
    FactSet,
    Paper,
    PaperTable,
    Row,
    relative_improvement,
)
from tasksim_ray.papers.store import FACT_SETS, TABLES, load, load_facts, load_file, lookup, papers

__all__ = [
    "FACT_SETS", "TABLES", "Cell", "CellComparison", "Column", "Comparison", "Derived", "Fact", "FactComparison",
    "FactSet", "Measured", "Paper", "PaperTable", "Row", "RowComparison", "SideBySide", "compare", "compare_facts",
    "load", "load_facts", "load_file", "lookup", "normalize_results", "papers", "relative_improvement",
    "side_by_side",
]
