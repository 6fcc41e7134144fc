"""A shared artifact store: ``<workdir>`` mirrored at a URI (a local path, ``s3://`` or ``gs://``).

Artifacts are built on local disk first and published here, so workers on other nodes find what
any node built. The store is named by one environment variable, ``TASKSIM_STORAGE``: the driver
sets it when a run starts (:func:`activate`) and ``runtime.ensure_ray`` hands it to every Ray
worker through the job's ``runtime_env``, because workers do not share the driver's Python
globals. Only the URI, endpoint, region and local root travel; credentials come from each
node's environment (``AWS_*`` variables, an instance role, ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from tasksim_ray.errors import TasksimError

if TYPE_CHECKING:  # cache.py imports this module: keep it free of the config package
    from tasksim_ray.config import StorageConfig

ENV = "TASKSIM_STORAGE"


@dataclass(frozen=True)
class ArtifactStore:
    """The store at ``uri`` mirroring the local directory ``root``: a local path under ``root``
    lives at the same relative path under ``uri``. A relative ``root`` is resolved in each process,
    as the relative artifact paths handed to Ray workers are."""

    uri: str
    root: str
    endpoint_override: str | None = None
    region: str | None = None

    @cached_property
    def _opened(self) -> tuple[pafs.FileSystem, str]:
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else ""
        if scheme == "s3":  # built directly: from_uri would ask AWS for the bucket's region
            fs = pafs.S3FileSystem(endpoint_override=self.endpoint_override, region=self.region, connect_timeout=10,
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
            return fs, self.uri.removeprefix("s3://").rstrip("/")
        fs, base = pafs.FileSystem.from_uri(self.uri if scheme else os.path.abspath(self.uri))
        return fs, base.rstrip("/")

    @property
    def fs(self) -> pafs.FileSystem:
        return self._opened[0]

    def check(self) -> None:
        """Open the store once up front, so a bad URI fails in one line before any work is done."""
        try:
            fs, base = self._opened
            if isinstance(fs, pafs.LocalFileSystem):
                fs.create_dir(base, recursive=True)
            elif fs.get_file_info(base.split("/")[0]).type == pafs.FileType.NotFound:
                raise TasksimError(f"storage.uri {self.uri}: bucket '{base.split('/')[0]}' not found")
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TasksimError(f"storage.uri {self.uri}: {reason}") from None

    def location(self, path: Path) -> str | None:
        """Where a local path lives in the store; None when it is outside the mirrored root."""
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        if rel.startswith(".."):
            return None
        return self._opened[1] if rel == "." else f"{self._opened[1]}/{Path(rel).as_posix()}"

    def exists(self, path: Path) -> bool:
        where = self.location(path)
        return where is not None and self.fs.get_file_info(where).type == pafs.FileType.File

    def upload(self, source: Path, dest: Path, last: str | None = None) -> None:
        """Copy the tree ``source`` to where ``dest`` lives in the store; the file named ``last``
        goes after every other, so a reader that sees it sees a whole artifact."""
        where = self.location(dest)
        if where is None:
            return
        names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if not p.is_dir())
        for name in [n for n in names if n != last] + [n for n in names if n == last]:
            self.put(source / name, f"{where}/{name}")

    def put(self, local: Path, where: str) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
        with local.open("rb") as src, self.fs.open_output_stream(where) as out:
            shutil.copyfileobj(src, out, 1 << 22)

    def download(self, path: Path, into: Path) -> None:
        """Copy what the store holds for the local ``path`` (a file or a tree) to ``into``."""
        where = self.location(path)
        if where is None:
            raise ValueError(f"{path} is outside the mirrored directory {self.root}")
        if self.fs.get_file_info(where).type == pafs.FileType.File:
            self.get(where, into)
            return
        for info in self.fs.get_file_info(pafs.FileSelector(where, recursive=True)):
            if info.type == pafs.FileType.File:
                self.get(info.path, into / info.path[len(where) + 1:])

    def get(self, where: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(where, str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())


def open_store(cfg: StorageConfig, workdir: Path) -> ArtifactStore | None:
    """The store a config names (endpoint and region default to the standard AWS variables)."""
    if not cfg.uri:
        return None
    env = os.environ
    return ArtifactStore(cfg.uri, str(workdir),
                         cfg.endpoint_override or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
                         cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))


def activate(cfg: StorageConfig, workdir: Path) -> None:
    """Make this process (and the Ray workers it starts) use the store ``cfg`` names, or none."""
    store = open_store(cfg, workdir)
    if store is None:
        os.environ.pop(ENV, None)
        return
    store.check()
    os.environ[ENV] = json.dumps(asdict(store))


def worker_env() -> dict[str, str]:
    """The environment variables Ray workers need to reach the active store ({} when none)."""
    return {ENV: os.environ[ENV]} if ENV in os.environ else {}


def active() -> ArtifactStore | None:
    """The store this process mirrors its workdir to, from ``TASKSIM_STORAGE``."""
    spec = os.environ.get(ENV)
    return _from_spec(spec) if spec else None


@lru_cache(maxsize=4)
def _from_spec(spec: str) -> ArtifactStore:
    return ArtifactStore(**json.loads(spec))
