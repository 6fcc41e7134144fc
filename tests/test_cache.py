from pathlib import Path

import pytest

from tasksim_ray.infra.cache import atomic_dir, is_complete, stable_hash, write_manifest


def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    final = tmp_path / "stage" / "key"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed halfway")
    assert not final.exists()
    assert list((tmp_path / "stage").iterdir()) == []


def test_atomic_dir_publishes_complete_artifact(tmp_path: Path) -> None:
    final = tmp_path / "s" / "k"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("ok")
        write_manifest(tmp, "s", "k")
    assert is_complete(final) and (final / "a.txt").read_text() == "ok"


def test_stable_hash_ignores_dict_order_and_sees_values() -> None:
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
