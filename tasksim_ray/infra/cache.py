"""Content-addressed artifacts: the one scheme for every cached thing.

Every cached thing (a stage, a model, a transfer cell, a crystal feature tensor, an RSA vector)
is a folder ``<artifacts>/<kind>/<key>/`` where the key hashes everything it depends on, so a rerun
finds finished work and a changed setting redoes only what depends on it. A folder is built under
a temporary name, its ``manifest.json`` is written last and lists every file's sha256 (so
:func:`verify` can tell a damaged copy), and it is renamed into place when complete, so an
interrupted build never leaves a half-written artifact behind. :class:`Artifacts` is the API for
one kind: build, save and load JSON or torch values, check completeness.

With a shared store (``tasksim_ray.infra.storage``) these are also the hooks that mirror artifacts:
``atomic_dir`` publishes a directory before committing it locally, manifest last, and
``is_complete`` downloads an artifact that is finished in the store but missing here.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import storage

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hash JSON-serialisable parts (dicts sorted by key) to a short hex digest."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# Every kind of artifact and the version of the code that builds it. Bump a kind's number when its
# code changes what it writes (featurisation, a metric, the training loop, a study's cells): the
# number enters every key of that kind, so that kind is rebuilt, and so is everything built from it
# (their keys hold its key), while every other cached artifact is reused.
KIND_VERSIONS: dict[str, int] = {
    "tasks": 1, "preprocess": 1, "featurize": 1, "probe": 1, "model": 1, "subset-model": 1, "embedding": 1,
    "dataset_features": 1, "similarity": 1, "rsa-vector": 1, "published-models": 1,
    "published-model": 1, "foundation-model": 1, "transfer-data": 1, "transfer-split-data": 1,
    "expert-features": 1, "layer-features": 1, "cell": 2,
}


def code_version(kind: str) -> int:
    """The code version of one kind: part of the key of artifacts built by other kinds' code that
    runs this kind's code too (a probe set or the transfer data featurise their molecules)."""
    if kind not in KIND_VERSIONS:
        raise TasksimError(f"unknown artifact kind '{kind}'; kinds: {', '.join(sorted(KIND_VERSIONS))}")
    return KIND_VERSIONS[kind]


def artifact_key(kind: str, *parts: Any, length: int = 16) -> str:
    """The one key function of the artifact store: (kind, its code version, inputs and config parts)."""
    return stable_hash(kind, code_version(kind), *parts, length=length)


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify an input file by path, size and mtime (cheap, and changes when the file does)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_complete(directory: Path) -> bool:
    """Finished and intact here, or finished in the shared store (then downloaded and checked, so
    it is here now). A damaged copy is removed with a one-line warning: the caller rebuilds it."""
    if (directory / MANIFEST).is_file() and intact(directory):
        return True
    store = storage.active()
    if store is None or not store.exists(directory / MANIFEST):
        return False
    with _local_atomic_dir(directory) as tmp:
        store.download(directory, tmp)
        if not intact(tmp, name=directory):
            raise _Discard
    return (directory / MANIFEST).is_file()


_verified: dict[str, tuple[Any, ...]] = {}  # folder -> the stat of its files when last checked


def _stamp(directory: Path) -> tuple[Any, ...]:
    """What changes when any file of the folder is rewritten, truncated or replaced: cheap stat calls."""
    return tuple((p.relative_to(directory).as_posix(), st.st_ino, st.st_size, st.st_mtime_ns)
                 for p in sorted(directory.rglob("*")) if p.is_file() and (st := p.stat()))


def intact(directory: Path, name: Path | None = None) -> bool:
    """Whether the manifest is readable and every file it lists matches its sha256, hashed once per
    process while the files are unchanged. If not, warn in one line naming it and delete it."""
    if not (directory / MANIFEST).is_file():  # replaced or removed since the caller looked: not here
        return False
    try:
        stamp = _stamp(directory)
        if _verified.get(str(directory)) == stamp:
            return True
        verify(directory)
    except (OSError, ValueError, TasksimError, AttributeError) as exc:
        reason = exc if isinstance(exc, TasksimError) else f"unreadable manifest ({type(exc).__name__})"
        log.warning("damaged cached artifact %s, rebuilding it: %s", name or directory, reason)
        _remove(directory)
        return False
    _verified[str(directory)] = stamp
    return True


class _Discard(Exception):
    """Leave ``_local_atomic_dir`` without publishing the scratch folder (a damaged download)."""


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
    _sweep(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, final)
    except _Discard:
        pass
    except OSError as exc:  # a full disk under a writer that does not name its file: name the artifact
        if exc.errno not in DISK_ERRNOS:
            raise
        raise TasksimError(write_error(exc.filename or final, exc).replace(str(tmp), str(final))) from None
    except TasksimError as exc:  # a writer's one line names the file as the artifact will have it
        if str(tmp) not in str(exc):
            raise
        raise type(exc)(str(exc).replace(str(tmp), str(final))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# a write that failed because of the disk, not the data: full, over quota, too large, read-only
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def write_error(path: Path | str, exc: BaseException) -> str:
    """One line for a failed write: the path and the reason (an OS error's, else the writer's
    first line: torch and numpy report a full disk without an errno)."""
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno)
    else:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"write failed ({first}); is the disk full?"
    return f"{path}: cannot write: {reason}"


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Whatever a writer raises while it writes ``path`` (torch's ``RuntimeError`` for a short
    write, an ``OSError`` without a file name) becomes a one-line error naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise TasksimError(write_error(path, exc)) from None


class _Recording:
    """A file that remembers the OS error of a failed write: torch's writer reports only its own
    ``RuntimeError`` ("unexpected pos"), this keeps the reason (ENOSPC, EFBIG)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` whose failure (a full disk) is one line naming the file and the OS's reason,
    not a torch traceback."""
    import torch

    with writing(path), path.open("wb") as fh:
        out = _Recording(fh)
        try:
            torch.save(obj, out)
        except RuntimeError as exc:
            raise (out.error or exc) from None


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` without a moment where a reader of a finished ``final`` loses it:
    an intact ``final`` with the same key (a concurrent or earlier writer of the same content) is
    kept and ours dropped; any other ``final`` is renamed aside first, then deleted."""
    ours = _key(tmp)
    for _ in range(5):
        if (final / MANIFEST).is_file() and ours is not None and _key(final) == ours and intact(final):
            return
        if final.exists():
            _remove(final)
        try:
            os.replace(tmp, final)
            return
        except OSError as exc:  # another writer published between our check and our rename
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise TasksimError(f"could not publish {final}: other writers keep replacing it")


def _key(directory: Path) -> str | None:
    try:
        return read_manifest(directory).get("key")
    except (OSError, ValueError, AttributeError):
        return None


STALE_S = 6 * 3600  # a scratch folder untouched this long belongs to a writer that died (kill -9, power)


def _sweep(final: Path) -> None:
    """Delete the scratch and set-aside folders of ``final`` that dead writers left behind. Young
    ones may belong to a writer still at work, so they stay."""
    now = time.time()
    found = [p for prefix in (".tmp", ".old") for p in final.parent.glob(f"{prefix}-{glob.escape(final.name)}-*")]
    for stale in found:
        try:
            if now - stale.stat().st_mtime > STALE_S:
                shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:
            continue


def _remove(directory: Path) -> None:
    """Rename aside, then delete: readers never see a half-deleted folder under the real name."""
    aside = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(directory, aside)
    except FileNotFoundError:
        return
    _verified.pop(str(directory), None)
    shutil.rmtree(aside, ignore_errors=True)


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it for every thread meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(fd_or_path: int | str | Path) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the mode any other file of this process
    gets (0666 less the umask), so an atomically written report is as readable as the rest, e.g. to
    colleagues in a group-shared folder."""
    mode = 0o666 & ~current_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask_mode(fd)
        with writing(path), os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_hashes(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: Path, stage: str, key: str, **info: Any) -> None:
    """Write the manifest last: it names the artifact and records the sha256 of every file in it."""
    write_json_atomic(directory / MANIFEST, {"stage": stage, "key": key, **info, "files": _file_hashes(directory)})


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


def verify(directory: Path) -> None:
    """Check every file the manifest lists against its recorded sha256 (a one-line error if not)."""
    recorded = read_manifest(directory).get("files", {})
    for name, digest in recorded.items():
        path = directory / name
        if not path.is_file():
            raise TasksimError(f"artifact {directory}: {name} is missing")
        if sha256_file(path) != digest:
            raise TasksimError(f"artifact {directory}: {name} does not match its manifest's sha256")


@dataclass(frozen=True)
class Artifacts:
    """One kind of cached thing: the folders ``<root>/<key>/``, complete once their manifest is there
    (here, or in the shared store: then fetched). ``root`` is ``<artifacts>/<kind>``."""

    root: Path
    kind: str

    def key(self, *parts: Any) -> str:
        """This kind's key for these inputs and settings (:func:`artifact_key`)."""
        return artifact_key(self.kind, *parts)

    def path(self, key: str) -> Path:
        return self.root / key

    def complete(self, key: str) -> bool:
        return is_complete(self.path(key))

    @contextmanager
    def build(self, key: str, **info: Any) -> Iterator[Path]:
        """A scratch folder that becomes the artifact ``key`` (manifest last) if the block finishes."""
        with atomic_dir(self.path(key)) as tmp:
            yield tmp
            write_manifest(tmp, self.kind, key, **info)

    def save_json(self, key: str, obj: Any) -> None:
        with self.build(key) as tmp:
            write_json_atomic(tmp / "result.json", obj)

    def load_json(self, key: str) -> Any:
        return json.loads((self.path(key) / "result.json").read_text())
