"""Shared fixtures: one real local Ray instance (2 CPUs) for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
TINY_DATA = REPO / "tests" / "data" / "qm9_motse_600.csv"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    os.environ.pop("RAY_ADDRESS", None)  # tests always start their own local instance
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
