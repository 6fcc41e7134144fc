"""Crystal dataset loaders and split sources on the shipped subsets (and the full shared files where present)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.io.cif import CifWriter

from tasksim_ray.config import DataConfig, SplitConfig
from tasksim_ray.data.crystal_files import load_id_prop_folder, load_json_table, load_table
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.splits import load_published_splits, load_splits
from tasksim_ray.errors import TasksimError

DATA = Path(__file__).resolve().parent / "data" / "crystals"
MOE = DATA / "moe"
EXPT = MOE / "moe_tasks" / "expt_formation_enthalpy_combined_RC.json.gz"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crystals"


def test_moe_task_with_published_split_seeds() -> None:
    ds = load_json_table(EXPT)
    splits = load_published_splits(MOE / "moe_splits", "expt_eform", len(ds), seeds=[0, 1])
    assert len(ds) == 12 and ds.ids[0] == "mp-1138" and ds.units == {"e_form expt": "eV/atom"}
    assert list(ds.targets.columns) == ["e_form expt"] and ds.targets.dtypes.iloc[0] == np.float64
    assert ds.labels("e_form expt")[0] == pytest.approx(-3.197)  # source row 1693
    train, val, test = splits[0]
    assert train.tolist() == [0, 1, 2, 3] and val.tolist() == [4, 5, 6, 7] and test.tolist() == [8, 9, 10, 11]
    assert splits[1][1].tolist() == [6, 5]
    assert ds.structures[0].composition.reduced_formula == "LiF"
    with pytest.raises(TasksimError, match="seed2_correctedExptEf.json: file not found"):
        load_published_splits(MOE / "moe_splits", "expt_eform", len(ds), seeds=[2])


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not at ../shared/data")
def test_full_moe_split_sizes() -> None:
    splits = load_published_splits(SHARED / "moe_splits", "expt_eform", 1709)
    assert len(splits) == 5 and all(tuple(map(len, s)) == (1196, 257, 256) for s in splits)
    assert splits[0][0][:3].tolist() == [1693, 634, 1214]
    with pytest.raises(TasksimError, match=r"seed0_correctedExptEf.json: 'expt_eform': train index \d+ out of range"):
        load_published_splits(SHARED / "moe_splits", "expt_eform", 12, seeds=[0])
    ds = load_json_table(SHARED / "moe_tasks" / "jarvis_dft_2d_dielectric_tbmbj_2022-04-11.json.gz")
    splits = load_published_splits(SHARED / "moe_splits", "jarvis_2d_dielectric_tbmbj", len(ds))
    assert len(ds) == 120 and not ds.targets.isna().any().any()
    assert all(sorted(np.concatenate(s).tolist()) == list(range(120)) for s in splits)


def test_matbench_split_orient_rows_and_bad_row(tmp_path: Path) -> None:
    with gzip.open(EXPT, "rt") as fh:
        src = json.load(fh)
    rows = [[r["structure"], r["e_form expt"]] for r in src["data"][:3]]
    doc = {"index": ["mb-x-1", "mb-x-2", "mb-x-3"], "columns": ["structure", "e_form"], "data": rows}
    good = tmp_path / "matbench_mp_e_form.json.gz"
    with gzip.open(good, "wt") as fh:
        json.dump(doc, fh)
    ds = load_json_table(good)
    assert ds.ids == ["mb-x-1", "mb-x-2", "mb-x-3"] and ds.units == {"e_form": "eV/atom"}
    assert ds.labels("e_form").tolist() == [r[1] for r in rows]
    doc["data"][1][0] = {"lattice": "nonsense"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TasksimError, match=r"bad.json: row 1: unparseable structure"):
        load_json_table(bad)


def test_id_prop_folder(tmp_path: Path) -> None:
    ds = load_id_prop_folder(DATA / "id_prop", target="e_form expt", units="eV/atom")
    assert ds.ids == ["mp-1138", "mp-2696", "mp-348"]
    assert ds.labels("e_form expt").tolist() == [-3.197, -0.0455, -0.9597]
    assert [s.composition.reduced_formula for s in ds.structures] == ["LiF", "MgAg", "TmPd"]
    # POSCAR variants, a missing label, and a row whose structure file is absent
    folder = tmp_path / "vasp"
    (folder / "b").mkdir(parents=True)
    shutil.copy(DATA / "id_prop" / "mp-1138.cif", folder / "a.cif")
    ds.structures[1].to(filename=str(folder / "b" / "POSCAR"), fmt="poscar")
    ds.structures[2].to(filename=str(folder / "c.vasp"), fmt="poscar")
    (folder / "id_prop.csv").write_text("a,1.0\nb,\nc,3.5\n")
    got = load_id_prop_folder(folder)
    assert np.isnan(got.labels("target")[1]) and got.labels("target")[2] == 3.5
    assert got.structures[2].composition.reduced_formula == "TmPd"
    (folder / "id_prop.csv").write_text("a,1.0\nzz,2.0\n")
    with pytest.raises(TasksimError, match=r"id_prop.csv: row 1 \(id 'zz'\): no structure file"):
        load_id_prop_folder(folder)
    # an id that names a path outside the folder is refused before anything is read or quoted
    (tmp_path / "secret").write_text("TOP SECRET LINE\n")
    for bad in ("../secret", "b/../../secret", "..\\secret"):
        (folder / "id_prop.csv").write_text(f"a,1.0\n{bad},2.0\n")
        with pytest.raises(TasksimError, match="is not a plain file name") as err:
            load_id_prop_folder(folder)
        assert "TOP SECRET" not in str(err.value)


def test_matminer_tables_in_every_cell_form(tmp_path: Path) -> None:
    base = load_json_table(EXPT)
    structures = base.structures[:4]
    cells = [structures[0], structures[1].as_dict(), json.dumps(structures[2].as_dict()), str(CifWriter(structures[3]))]
    frame = pd.DataFrame({"mpid": base.ids[:4], "structure": cells, "y": [1.0, None, 3.0, 4.0], "formula": list("abcd")})
    frame.to_pickle(tmp_path / "t.pkl")
    with pytest.raises(TasksimError, match=r"t.pkl: reading a pickle runs code"):
        load_table(tmp_path / "t.pkl")
    ds = load_table(tmp_path / "t.pkl", units={"y": "eV"}, trust_pickle=True)
    assert ds.ids == base.ids[:4] and list(ds.targets.columns) == ["y"] and ds.units == {"y": "eV"}
    assert np.isnan(ds.labels("y")[1])
    assert [s.composition for s in ds.structures] == [s.composition for s in structures]
    text = frame.assign(structure=[json.dumps(structures[0].as_dict()), *cells[1:]])
    text["structure"] = [c if isinstance(c, str) else json.dumps(c) for c in text["structure"]]
    text.to_csv(tmp_path / "t.csv", index=False)
    text.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        assert len(load_table(tmp_path / name, targets=["y"])) == 4
    text.loc[2, "structure"] = "not a structure"
    text.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TasksimError, match=r"bad.csv: row 2: unparseable structure"):
        load_table(tmp_path / "bad.csv")
    with pytest.raises(TasksimError, match=r"t.csv: missing column\(s\) \['gap'\]"):
        load_table(tmp_path / "t.csv", targets=["gap"])
    with pytest.raises(TasksimError, match=r"nope.csv: file not found"):
        load_table(tmp_path / "nope.csv")


def _table(path: Path) -> object:
    return load_tasks(DataConfig(source="crystals", path=str(path)))


def test_published_splits_map_onto_task_rows() -> None:
    table = _table(EXPT)
    assert table.names == ["expt_eform"]  # the known file's short alias, which is also its split key
    cfg = SplitConfig(kind="published", path=str(MOE / "moe_splits"), seeds=[0, 1])
    splits = load_splits(cfg, table, "expt_eform")
    assert [s.tolist() for s in splits[0]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert splits[1][1].tolist() == [6, 5]  # published order kept
    with pytest.raises(TasksimError, match=r"seed0_correctedExptEf.json: no split key 'nope'"):
        load_splits(cfg.model_copy(update={"key": "nope"}), table, "expt_eform")


def test_split_errors_name_file_and_key(tmp_path: Path) -> None:
    table = _table(EXPT)
    doc = json.loads((MOE / "moe_splits" / "task_partition_indices_seed0_correctedExptEf.json").read_text())
    for name, parts in {"range": [[0, 1], [2], [12]], "overlap": [[0, 1], [1], [3]]}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "mine_seed0.json").write_text(json.dumps({**doc, "expt_eform": parts}))
        cfg = SplitConfig(kind="published", path=str(folder))
        message = r"test index 12 out of range for 12 rows" if name == "range" else r"row 1 appears twice"
        with pytest.raises(TasksimError, match=rf"mine_seed0.json: 'expt_eform': {message}"):
            load_splits(cfg, table, "expt_eform")
    with pytest.raises(TasksimError, match=r"no \*_seed3\*.json files"):
        load_splits(SplitConfig(kind="published", path=str(MOE / "moe_splits"), seeds=[3]), table, "expt_eform")


def test_file_column_and_random_splits(tmp_path: Path) -> None:
    table = _table(EXPT)
    csv = tmp_path / "split.csv"
    csv.write_text("row,split\n" + "".join(f"{i},{'train' if i < 8 else 'test' if i < 10 else 'val'}\n"
                                         for i in range(12)))
    (train, val, test), = load_splits(SplitConfig(kind="file", path=str(csv)), table, "expt_eform")
    assert train.tolist() == list(range(8)) and test.tolist() == [8, 9] and val.tolist() == [10, 11]
    as_json = tmp_path / "split.json"
    as_json.write_text(json.dumps([[3, 4], [5], [99]]))
    with pytest.raises(TasksimError, match=r"split.json: test index 99 out of range for 12 rows"):
        load_splits(SplitConfig(kind="file", path=str(as_json)), table, "expt_eform")
    # a split column of the user's data file
    with gzip.open(EXPT, "rt") as fh:
        doc = json.load(fh)
    for i, row in enumerate(doc["data"]):
        row["fold"] = ["train", "val", "test"][i % 3]
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(doc))
    table = _table(mine)
    (train, val, test), = load_splits(SplitConfig(kind="column", column="fold"), table, "e_form expt")
    assert train.tolist() == [0, 3, 6, 9] and val.tolist() == [1, 4, 7, 10] and test.tolist() == [2, 5, 8, 11]
    with pytest.raises(TasksimError, match=r"mine.json: no split column 'part'"):
        load_splits(SplitConfig(kind="column", column="part"), table, "e_form expt")
    # seeded random fractions of the labelled rows: reproducible, disjoint, covering
    cfg = SplitConfig(kind="random", seeds=[0, 1], fractions=(0.5, 0.25, 0.25))
    first, again = load_splits(cfg, table, "e_form expt"), load_splits(cfg, table, "e_form expt")
    assert all(np.array_equal(a, b) for s, t in zip(first, again) for a, b in zip(s, t))
    assert [len(p) for p in first[0]] == [6, 3, 3] and sorted(np.concatenate(first[1]).tolist()) == list(range(12))
    assert not np.array_equal(first[0][0], first[1][0])


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not at ../shared/data")
def test_published_splits_of_every_shared_moe_file() -> None:
    """Each MoE task file's table (all its numeric columns) takes its published splits by its known key."""
    cfg = SplitConfig(kind="published", path=str(SHARED / "moe_splits"), seeds=[0, 1, 2, 3, 4])
    for name in ("jarvis_dft_2d_dielectric_tbmbj_2022-04-11", "log_piezoelectric_tensor_RC"):
        table = _table(SHARED / "moe_tasks" / f"{name}.json.gz")
        for task in table.names:
            splits = load_splits(cfg, table, task)
            rows = [np.concatenate(s) for s in splits]  # disjoint parts; the piezo split leaves one row out
            assert len(splits) == 5 and all(len(set(r)) == len(r) >= len(table.frame) - 1 for r in rows), task
    assert table.names == ["piezoelectric_tensor", "log_piezoelectric_tensor"]


def test_repeated_ids_in_a_crystal_file_are_made_unique_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The published experimental formation enthalpies list mp-2658 on two rows: both stay tasks' rows."""
    from tasksim_ray.data.crystals import unique_ids

    with caplog.at_level("WARNING"):
        assert unique_ids(["a", "b", "a", "a"], Path("x.json.gz")) == ["a", "b", "a#2", "a#3"]
    assert "x.json.gz: 1 ids are on several rows (e.g. 'a')" in caplog.text
    assert unique_ids(["a", "b"], Path("y.json.gz")) == ["a", "b"]


def test_kfold_split_is_sklearns_kfold_over_file_rows() -> None:
    """Matbench's folds: KFold(5, shuffle=True, random_state=18012019) over the rows in file order; each
    training fold splits into train + seeded validation, and max_train subsamples train, nested."""
    from sklearn.model_selection import KFold

    table = _table(DATA / "tiny_tasks" / "jarvis_dft_2d_exfol_energy.json.gz")
    task = table.names[0]
    n = len(table.frame)
    cfg = SplitConfig(kind="kfold", seeds=[0, 1, 2, 3, 4], val_fraction=0.2)
    splits = load_splits(cfg, table, task)
    for (train, val, test), (ref_train, ref_test) in zip(splits, KFold(5, shuffle=True, random_state=18012019)
                                                         .split(np.arange(n))):
        assert sorted(test.tolist()) == sorted(ref_test.tolist())
        assert sorted(np.concatenate([train, val]).tolist()) == sorted(ref_train.tolist())
        assert len(val) == round(0.2 * len(ref_train)) and not set(train) & set(val)
    small, large = (load_splits(cfg.model_copy(update={"max_train": m}), table, task)[0][0] for m in (10, 20))
    assert len(small) == 10 and set(small) <= set(large) <= set(splits[0][0])
    with pytest.raises(ValueError, match=r"split.seeds are kfold test folds"):
        SplitConfig(kind="kfold", seeds=[5])
