"""The published experimental formation enthalpy split addresses the rows of its file, in order.

The ``correctedExptEf`` split files were built by a rule on the rows (rees-c/MoE
``partition_expt_eform_data.py``): test = the first 15% of the shuffled compounds with no element whose
Materials Project energies are fitted to experiment, train/val = the shuffled fitted compounds followed
by the other unfitted ones, cut at 70%. Re-running that rule on the rows as our loader reads them gives
the split files exactly only if the loader's positions are the file's rows in the file's order; a
shifted, reordered or filtered mapping would not (results/moe_paper/expt_eform_check.py does all seeds).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tasksim_ray.config import DataConfig, SplitConfig
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.splits import load_splits
from tasksim_ray.data.tasks import SOURCE_ROW

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crystals"
FILE = SHARED / "moe_tasks" / "expt_formation_enthalpy_combined_RC.json.gz"
FITTED = frozenset("S F Cl Br I N H Se Si Sb Te O V Cr Mn Fe Co Ni W Mo".split())


def _elements(structure_json: str) -> set[str]:
    return {sp["element"] for site in json.loads(structure_json)["sites"] for sp in site["species"]}


@pytest.mark.skipif(not FILE.is_file(), reason="shared data not at ../shared/data")
def test_corrected_expt_eform_split_is_the_fitted_element_rule_on_our_rows() -> None:
    table = load_tasks(DataConfig(source="crystals", path=str(FILE)))
    assert table.frame[SOURCE_ROW].tolist() == list(range(1709))
    mpids = [i.split("#")[0] for i in table.frame["mol_id"]]
    fitted = [bool(FITTED & _elements(s)) for s in table.frame["structure"]]
    train, val, test = load_splits(SplitConfig(kind="published", path=str(SHARED / "moe_splits"), seeds=[0]),
                                   table, "expt_eform")[0]
    assert not any(fitted[i] for i in np.r_[val, test])  # the test and val parts hold no fitted compound
    rng = random.Random(0)
    fitted_ids = {m for m, f in zip(mpids, fitted) if f}
    rows = [[i for i, m in enumerate(mpids) if (m in fitted_ids) == want] for want in (True, False)]
    rng.shuffle(rows[0])
    rng.shuffle(rows[1])
    rest = rows[0] + rows[1][256:]
    assert (train.tolist(), val.tolist(), test.tolist()) == (rest[:1196], rest[1196:], rows[1][:256])
