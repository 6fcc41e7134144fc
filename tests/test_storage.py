"""The shared artifact store: on a local path, and on S3 through a real S3 emulator (moto's
server on 127.0.0.1), including a tiny pipeline that publishes, loses its workdir and reuses
everything from the bucket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tasksim_ray.config import RayConfig, StorageConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import storage
from tasksim_ray.infra.cache import MANIFEST, Artifacts, atomic_dir, is_complete, verify, write_manifest
from tasksim_ray.infra.runtime import ensure_ray

from .conftest import REPO, TINY_CONFIG

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server, with dummy credentials in the environment while it runs."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"tasksim-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def no_active_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(storage.ENV, raising=False)  # whatever a test activates is undone after it


def _keys(endpoint: str, bucket: str) -> set[str]:
    pages = boto3.client("s3", endpoint_url=endpoint, region_name=REGION).get_paginator("list_objects_v2")
    return {o["Key"] for page in pages.paginate(Bucket=bucket) for o in page.get("Contents", [])}


def _build(final: Path, files: dict[str, bytes]) -> None:
    with atomic_dir(final) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        write_manifest(tmp, "stage", final.name)


@pytest.mark.parametrize("as_uri", [False, True])
def test_local_store_publishes_and_fetches(tmp_path: Path, as_uri: bool) -> None:
    workdir, store_dir = tmp_path / "w", tmp_path / "store"
    storage.activate(StorageConfig(uri=store_dir.as_uri() if as_uri else str(store_dir)), workdir)
    final = workdir / "artifacts" / "stage" / "k1"
    _build(final, {"a.bin": b"abc", "sub/b.txt": b"b"})
    published = store_dir / "artifacts" / "stage" / "k1"
    assert sorted(p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()) == [
        "a.bin", MANIFEST, "sub/b.txt"]
    cells = Artifacts(workdir / "artifacts" / "cells", "cell")
    cells.save_json("c", {"mae": 1.5})
    shutil.rmtree(workdir)
    assert is_complete(final) and (final / "sub" / "b.txt").read_bytes() == b"b"
    assert cells.complete("c") and cells.load_json("c") == {"mae": 1.5}
    verify(final)  # fetched files match the sha256 their manifest recorded
    assert not is_complete(workdir / "artifacts" / "stage" / "missing")
    assert not cells.complete("missing")


def test_interrupted_upload_leaves_no_manifest(tmp_path: Path, endpoint: str, bucket: str) -> None:
    workdir = tmp_path / "w"
    storage.activate(StorageConfig(uri=f"s3://{bucket}/run", endpoint_override=endpoint, region=REGION), workdir)
    final = workdir / "artifacts" / "stage" / "k1"
    with pytest.raises(FileNotFoundError), atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"uploaded before the failure")
        (tmp / "b.bin").symlink_to(tmp / "gone")  # reading it fails halfway through the upload
        write_manifest(tmp, "stage", "k1")
    assert _keys(endpoint, bucket) == {"run/artifacts/stage/k1/a.bin"}  # some files, never the manifest
    assert not final.exists() and not is_complete(final)
    _build(final, {"a.bin": b"again"})  # the next attempt completes it
    assert _keys(endpoint, bucket) == {"run/artifacts/stage/k1/a.bin", f"run/artifacts/stage/k1/{MANIFEST}"}


@pytest.mark.parametrize("uri, endpoint_override, reason", [
    ("ftp://host/run", None, "Unrecognized filesystem type"),
    ("s3://tasksim/run", f"http://127.0.0.1:{_free_port()}", "Could not connect"),  # nothing listens there
    ("s3://no-such-bucket/run", "moto", "bucket 'no-such-bucket' not found"),
])
def test_bad_store_is_a_one_line_error_naming_the_uri(tmp_path: Path, endpoint: str, uri: str,
                                                      endpoint_override: str | None, reason: str) -> None:
    cfg = StorageConfig(uri=uri, endpoint_override=endpoint if endpoint_override == "moto" else endpoint_override)
    with pytest.raises(TasksimError) as err:
        storage.activate(cfg, tmp_path / "w")
    message = str(err.value)
    assert message.startswith(f"storage.uri {uri}: ") and reason in message and "\n" not in message, message
    assert storage.ENV not in os.environ


# The pipeline runs in its own process: tasksim starts Ray there, so the store reaches the workers
# through the job's runtime_env as on a cluster (the test session's Ray was started without it).
PIPELINE = """
import json, sys
import ray
from tasksim_ray.infra import storage
from tasksim_ray.config import load_config
from tasksim_ray.stages.pipeline import run_pipeline
res = run_pipeline(load_config(sys.argv[1], json.loads(sys.argv[2])), until="embed")
env = ray.get_runtime_context().runtime_env.get("env_vars", {})
print("RESULT " + json.dumps({"timings": res.timings, "workers_see_store": storage.ENV in env}))
"""


def _run_pipeline(overrides: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", storage.ENV)}
    proc = subprocess.run([sys.executable, "-c", PIPELINE, str(TINY_CONFIG), json.dumps(overrides)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _artifact_files(artifacts: Path) -> dict[str, bytes]:
    return {p.relative_to(artifacts).as_posix(): p.read_bytes() for p in sorted(artifacts.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_tiny_run_publishes_to_s3_and_reuses_it_without_the_workdir(tmp_path: Path, endpoint: str,
                                                                     bucket: str) -> None:
    workdir = tmp_path / "w"
    overrides = {"workdir": str(workdir), "storage.uri": f"s3://{bucket}/run",
                 "storage.endpoint_override": endpoint, "storage.region": REGION,
                 "data.targets": ["mu", "alpha", "homo"], "train.max_epochs": 2}  # small: two runs on 2 cores
    first = _run_pipeline(overrides)
    assert first["workers_see_store"]
    assert not any(t["cached"] for t in first["timings"].values())
    local = _artifact_files(workdir / "artifacts")
    keys = _keys(endpoint, bucket)
    assert {f"run/artifacts/{name}" for name in local} <= keys  # everything built is in the bucket
    for kind in ("tasks", "featurize", "probe", "models", "embeddings"):
        dirs = {n.split("/")[1] for n in local if n.startswith(f"{kind}/")}
        assert dirs and all(f"run/artifacts/{kind}/{d}/{MANIFEST}" in keys for d in dirs), kind
    models = {n.split("/")[1] for n in local if n.startswith("models/")}
    assert all(f"run/artifacts/models/{m}/state_dict.pt" in keys for m in models)  # written by Ray workers

    shutil.rmtree(workdir)
    again = _run_pipeline(overrides)
    for stage in ("tasks", "preprocess", "featurize", "pretrain", "probe", "embed"):
        assert again["timings"][stage]["cached"], stage
    assert _artifact_files(workdir / "artifacts") == local  # the same models, embeddings and manifests


def test_ray_started_without_the_store_is_refused(tmp_path: Path, ray_local: None) -> None:
    """Workers of a Ray someone else started would not see the store: say so instead of not sharing."""
    storage.activate(StorageConfig(uri=str(tmp_path / "store")), tmp_path / "w")
    with pytest.raises(TasksimError, match=r"Ray was started without this store in its runtime_env"):
        ensure_ray(RayConfig())
