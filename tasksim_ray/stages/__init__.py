"""Pipeline stages. Each takes the typed artifacts of the stages before it and returns its own.

A stage's key hashes its settings and its inputs' keys: a rerun reuses every finished stage, and a
changed setting reruns that stage and those after it only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasksim_ray.config import PipelineConfig
from tasksim_ray.embedding.hosts import HostGroup
from tasksim_ray.infra import resources, storage
from tasksim_ray.infra.cache import artifact_key, atomic_dir, is_complete, read_manifest, write_manifest
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.stages.preflight import check_config, run_requests


@dataclass
class Stage:
    """A finished stage: where its artifact lives and the key that names it."""

    name: str
    key: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)


@dataclass
class Run:
    """One run of the pipeline or a study: its config, console, stage timings and model hosts."""

    cfg: PipelineConfig
    console: Console
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    _hosts: HostGroup | None = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        check_config(self.cfg)  # a config that cannot work is refused before anything is written
        storage.activate(self.cfg.storage, self.cfg.workdir_path)  # this process and its Ray workers

    def start_ray(self) -> None:
        """Start or join Ray, then check every request the config can make against the cluster."""
        ensure_ray(self.cfg.ray)
        self.check_resources()

    def check_resources(self) -> None:
        """Refuse (one line naming the key) a request no node of the cluster can ever run, once per run."""
        if not self._checked:
            resources.check(run_requests(self.cfg))
            self._checked = True

    @property
    def artifacts(self) -> Path:
        return self.cfg.workdir_path / "artifacts"

    def hosts(self, n_models: int = 1) -> HostGroup:
        """The run's model hosts, started on first use and shared by every stage that embeds."""
        if self._hosts is None:
            self.check_resources()
            self._hosts = HostGroup(self.cfg.embed, n_models)
            plan = self._hosts.plan
            self.log("embed", f"{plan.n_hosts} model hosts ({plan.num_cpus:g} CPU, {plan.num_gpus:g} GPU each)")
        return self._hosts

    def release_hosts(self) -> None:
        """Free the hosts' resources for the stages that follow (Ray also ends them when the run goes)."""
        if self._hosts is not None:
            self._hosts.close()
            self._hosts = None

    def log(self, stage: str, message: str) -> None:
        self.console.print(f"\\[{stage}] {message}", highlight=False)

    def stage(self, name: str, key_parts: Any, build: Callable[[Path], dict[str, Any]]) -> Stage:
        """Return the cached artifact for these inputs, building it (atomically) if missing."""
        key = artifact_key(name, key_parts)
        path = self.artifacts / name / key
        start = time.perf_counter()
        if is_complete(path):
            self.console.print(f"[dim]\\[{name}] reusing cached artifact {key}[/dim]")
            self.timings[name] = {"seconds": 0.0, "cached": True}
        else:
            self.console.print(f"[bold]\\[{name}][/bold] running ({key})")
            with atomic_dir(path) as tmp:
                info = build(tmp)
                write_manifest(tmp, name, key, **info, build_seconds=round(time.perf_counter() - start, 3))
            self.timings[name] = {"seconds": round(time.perf_counter() - start, 2), "cached": False}
        return Stage(name, key, path)

    @contextmanager
    def timed(self, name: str, cached: bool = False) -> Iterator[dict[str, Any]]:
        """Time work that caches itself at a finer grain (per task, per pair)."""
        entry: dict[str, Any] = {"cached": cached}
        start = time.perf_counter()
        yield entry
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.timings[name] = entry
