"""Content-addressed stage artifacts.

Every stage writes into ``<workdir>/artifacts/<stage>/<key>/`` where the key hashes the stage's
config and the keys of its inputs, so a rerun finds finished work and a changed setting reruns
only the stages downstream of it. A directory is built under a temporary name and renamed into
place when complete, so an interrupted stage never leaves a half-written artifact behind.
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
    return (directory / MANIFEST).is_file()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block finishes."""
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


def write_manifest(directory: Path, stage: str, key: str, **info: Any) -> None:
    write_json_atomic(directory / MANIFEST, {"stage": stage, "key": key, **info})


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())
