"""The base of every config section: unknown keys are errors and a loaded config never changes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tasksim_ray.registry import Registry


class Strict(BaseModel):
    """A docstring under a field is its description: the docs' configuration reference shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def first_error(exc: ValidationError) -> str:
    """The first validation error as one line naming the key."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key '{key}': {msg}" if err["loc"] else msg


def registered(registry: Registry[Any], name: str) -> str:
    """``name`` if ``registry`` knows it; else the one-line error listing the registered names."""
    if name not in registry:
        raise ValueError(registry.unknown(name))
    return name
