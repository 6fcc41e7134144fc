import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from tasksim_ray.infra.cache import atomic_dir, is_complete, stable_hash, verify, write_manifest


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


def _artifact(root: Path, key: str = "k", payload: bytes = b"weights" * 1000) -> Path:
    final = root / "kind" / key
    with atomic_dir(final) as tmp:
        (tmp / "state_dict.pt").write_bytes(payload)
        (tmp / "config.json").write_text('{"backbone": "dmpnn"}')
        write_manifest(tmp, "kind", key)
    return final


@pytest.mark.parametrize("damage", [
    lambda d: (d / "state_dict.pt").write_bytes((d / "state_dict.pt").read_bytes()[:100]),  # truncated
    lambda d: (d / "config.json").write_text("garbage {"),
    lambda d: (d / "config.json").unlink(),
    lambda d: (d / "manifest.json").write_text("not json"),
    lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe"),
], ids=["truncated-weights", "garbage-config", "missing-file", "garbage-manifest", "binary-manifest"])
def test_damaged_artifact_is_removed_with_one_warning_then_rebuilt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], object]) -> None:
    final = _artifact(tmp_path)
    assert is_complete(final)  # checked (and remembered) while intact
    damage(final)
    with caplog.at_level(logging.WARNING, logger="tasksim_ray.infra.cache"):
        assert not is_complete(final)
    [record] = [r for r in caplog.records if r.name == "tasksim_ray.infra.cache"]
    assert str(final) in record.getMessage() and "\n" not in record.getMessage()
    assert not final.exists() and [p.name for p in final.parent.iterdir()] == []
    _artifact(tmp_path)
    assert is_complete(final)
    verify(final)


def test_a_different_key_replaces_and_the_same_key_keeps_the_first(tmp_path: Path) -> None:
    final = _artifact(tmp_path, payload=b"first")
    with atomic_dir(final) as tmp:  # same key: a concurrent writer of the same content; the first stays
        (tmp / "state_dict.pt").write_bytes(b"second")
        write_manifest(tmp, "kind", "k")
    assert (final / "state_dict.pt").read_bytes() == b"first"
    with atomic_dir(final) as tmp:  # another key under this name (a re-import): the new one wins
        (tmp / "state_dict.pt").write_bytes(b"third")
        write_manifest(tmp, "kind", "k2")
    assert (final / "state_dict.pt").read_bytes() == b"third"
    assert sorted(p.name for p in final.parent.iterdir()) == ["k"]


def _hammer(root: str, rounds: int) -> list[str]:
    """Write the artifact and read it back ``rounds`` times; every failure, as text."""
    errors: list[str] = []
    final = Path(root) / "kind" / "k"
    for i in range(rounds):
        try:
            if i % 2:
                _artifact(Path(root), payload=b"w" * 50_000)
            elif is_complete(final):
                assert len((final / "state_dict.pt").read_bytes()) == 50_000
                json.loads((final / "config.json").read_text())
        except Exception as exc:  # noqa: BLE001 -- counted, then asserted to be zero
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def test_concurrent_writers_and_readers_never_fail(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4) as procs, ThreadPoolExecutor(4) as threads:
        futures = [procs.submit(_hammer, str(tmp_path), 150) for _ in range(4)]
        futures += [threads.submit(_hammer, str(tmp_path), 150) for _ in range(4)]
        errors = [e for f in futures for e in f.result()]
    assert errors == []
    verify(tmp_path / "kind" / "k")
    assert [p.name for p in (tmp_path / "kind").iterdir()] == ["k"]


def test_scratch_left_by_a_dead_writer_is_swept_young_ones_stay(tmp_path: Path) -> None:
    import os
    import time

    from tasksim_ray.infra.cache import STALE_S

    final = tmp_path / "stage" / "abc"
    final.parent.mkdir()
    dead, aside, busy = (final.parent / n for n in (".tmp-abc-dead", ".old-abc-gone", ".tmp-abc-busy"))
    for d in (dead, aside, busy):
        d.mkdir()
        (d / "part.npy").write_bytes(b"x")
    old = time.time() - STALE_S - 60
    for d in (dead, aside):
        os.utime(d, (old, old))
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("done")
    assert not dead.exists() and not aside.exists()
    assert busy.exists() and (final / "a.txt").read_text() == "done"


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    from tasksim_ray.infra.cache import write_json_atomic
    from tasksim_ray.infra.figures import plt, save_figure

    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        save_figure(plt.figure(), tmp_path / "figure.png")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == \
        {"report.json": "0o640", "figure.png": "0o640", "plain.txt": "0o640"}
