"""The Ray job runner on a real local Ray (2 CPUs): skip, resume, dependencies, dedup, resources."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import Artifacts, read_manifest, verify
from tasksim_ray.infra.jobs import Job, JsonResults, ManifestResults, run_jobs, start_jobs


def work(log: str, key: str, fail: bool = False, *after: Any) -> dict[str, Any]:
    """A job body that leaves one file per call in ``log``, so a test can count the calls."""
    start = time.time()
    (Path(log) / f"{key}-{uuid.uuid4().hex[:6]}").touch()
    if fail:
        raise ValueError(f"bad input for {key}\nsecond line")
    time.sleep(0.2)
    return {"key": key, "after": list(after), "start": start, "end": time.time()}


def write_folder(root: str, key: str) -> dict[str, Any]:
    """A job that writes its own artifact (a checkpoint, say) and returns its metrics."""
    with Artifacts(Path(root), "model").build(key, metrics={"mae": 1.0}) as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    return {"mae": 1.0}


def forget(root: str, key: str) -> dict[str, Any]:
    return {}


def calls(log: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in log.iterdir())


@pytest.fixture
def log(tmp_path: Path) -> Path:
    (tmp_path / "log").mkdir()
    return tmp_path / "log"


def jobs(log: Path, keys: list[str], fail: str | None = None, **resources: Any) -> list[Job]:
    return [Job(k, f"job {k}", work, (str(log), k, k == fail), **resources) for k in keys]


def test_finished_jobs_are_skipped_and_results_come_in_order(ray_local: None, tmp_path: Path, log: Path) -> None:
    results = JsonResults(Artifacts(tmp_path / "cells", "cell"))
    first = run_jobs(jobs(log, ["c", "a", "b"]), results)
    assert [r["key"] for r in first] == ["c", "a", "b"] and calls(log) == ["a", "b", "c"]
    for key in "abc":  # folder, result.json, manifest last with each file's sha256
        assert read_manifest(tmp_path / "cells" / key)["files"].keys() == {"result.json"}
        verify(tmp_path / "cells" / key)
    events: list[tuple[str, bool]] = []
    again = run_jobs(jobs(log, ["a", "b", "c", "d"]), results, on_done=lambda n, c: events.append((n, c)))
    assert again[:3] == [first[1], first[2], first[0]] and calls(log) == ["a", "b", "c", "d"]
    assert events == [("job a", True), ("job b", True), ("job c", True), ("job d", False)]


def test_failed_job_is_one_line_error_and_the_rest_resume(ray_local: None, tmp_path: Path, log: Path) -> None:
    results = JsonResults(Artifacts(tmp_path / "cells", "cell"))
    with pytest.raises(TasksimError) as err:
        run_jobs(jobs(log, ["a", "bad", "b", "c"], fail="bad"), results)
    assert str(err.value) == "cell job 'job bad' failed: ValueError: bad input for bad"
    assert [k for k in ["a", "bad", "b", "c"] if results.done(k)] == ["a", "b", "c"]  # published before raising
    assert not [p for p in (tmp_path / "cells").iterdir() if p.name.startswith(".")]
    out = run_jobs(jobs(log, ["a", "bad", "b", "c"]), results)  # the rerun only does the missing job
    assert [r["key"] for r in out] == ["a", "bad", "b", "c"] and calls(log) == ["a", "b", "bad", "bad", "c"]


def test_jobs_wait_for_their_dependencies(ray_local: None, tmp_path: Path, log: Path) -> None:
    models = ManifestResults(Artifacts(tmp_path / "models", "model"), "metrics")
    cached, running = start_jobs([Job("m1", "model 1", write_folder, (str(tmp_path / "models"), "m1"))], models)
    assert cached == {} and list(running) == ["m1"]
    [cell] = run_jobs([Job("c", "cell", work, (str(log), "c", False), after=(running["m1"],))],
                      JsonResults(Artifacts(tmp_path / "cells", "cell")))
    assert cell["after"] == [{"mae": 1.0}]  # ran after the model, with its result
    assert models.done("m1") and models.load("m1") == {"mae": 1.0}
    with pytest.raises(TasksimError, match="model job 'lazy' failed: .*returned without writing"):
        run_jobs([Job("m2", "lazy", forget, (str(tmp_path / "models"), "m2"))], models)


def test_equal_keys_run_once(ray_local: None, tmp_path: Path, log: Path) -> None:
    out = run_jobs(jobs(log, ["a", "a", "b", "a"]), JsonResults(Artifacts(tmp_path / "cells", "cell")))
    assert [r["key"] for r in out] == ["a", "a", "b", "a"] and calls(log) == ["a", "b"]


def test_declared_resources_are_respected(ray_local: None, tmp_path: Path, log: Path) -> None:
    """Two jobs of 2 CPUs each on a 2-CPU Ray run one after the other; ``max_running`` caps too."""
    for name, kwargs, extra in [("cpus", {"num_cpus": 2}, {}), ("capped", {"num_cpus": 1}, {"max_running": 1})]:
        out = run_jobs(jobs(log, [f"{name}1", f"{name}2"], **kwargs), JsonResults(Artifacts(tmp_path / name, name)),
                       **extra)
        first, second = sorted(out, key=lambda r: r["start"])
        assert second["start"] >= first["end"], name
