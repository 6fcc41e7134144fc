"""Content-addressed stage artifacts.

Every stage writes into ``<workdir>/artifacts/<stage>/<key>/`` where the key hashes the stage's
config and the keys of its inputs, so a rerun finds finished work and a changed setting reruns
only the stages downstream of it. A directory is built under a temporary name and renamed into
place when complete, so an interrupted stage never leaves a half-written artifact behind.

With a shared store (``tasksim_ray.infra.storage``) these are also the hooks that mirror artifacts:
``atomic_dir`` publishes a directory before committing it locally, manifest last, and
``is_complete`` downloads an artifact that is finished in the store but missing here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasksim_ray.infra import storage

MANIFEST = "manifest.json"


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hash JSON-serialisable parts (dicts sorted by key) to a short hex digest."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify an input file by path, size and mtime (cheap, and changes when the file does)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_complete(directory: Path) -> bool:
    """Finished here, or finished in the shared store (then downloaded, so it is here now)."""
    if (directory / MANIFEST).is_file():
        return True
    store = storage.active()
    if store is None or not store.exists(directory / MANIFEST):
        return False
    with _local_atomic_dir(directory) as tmp:
        store.download(directory, tmp)
    return True


def file_complete(path: Path) -> bool:
    """A one-file artifact (written whole by ``publish_json``): here, or fetched from the store."""
    if path.is_file():
        return True
    store = storage.active()
    if store is None or not store.exists(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        store.download(path, Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block finishes. With a store,
    it is published first (manifest last): a failed upload leaves no finished artifact anywhere."""
    with _local_atomic_dir(final) as tmp:
        yield tmp
        if (store := storage.active()) is not None:
            store.upload(tmp, final, last=MANIFEST)


def publish_dir(directory: Path) -> None:
    """Copy a finished directory that is not a cached artifact (a report) to the store, if any."""
    if (store := storage.active()) is not None:
        store.upload(directory, directory)


@contextmanager
def _local_atomic_dir(final: Path) -> Iterator[Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # a stale or concurrent copy: the fresh one wins
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def publish_json(path: Path, obj: Any) -> None:
    """Write a one-file artifact atomically and copy it to the store, if any (one object: whole or
    absent); if the upload fails the local copy goes too, as ``atomic_dir`` does."""
    write_json_atomic(path, obj)
    if (store := storage.active()) is not None:
        try:
            store.upload_file(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise


def write_manifest(directory: Path, stage: str, key: str, **info: Any) -> None:
    write_json_atomic(directory / MANIFEST, {"stage": stage, "key": key, **info})


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())
