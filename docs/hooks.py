"""MkDocs hooks: pages generated from the code at build time, so the docs cannot drift from it.

- ``reference/configuration.md``: every key of :class:`tasksim_ray.config.PipelineConfig`, walked
  recursively, with its type, default and description (a field's docstring), and the registered
  names config validation accepts. A key without a description is a build warning, so
  ``mkdocs build --strict`` fails until it gets one.
- ``reference/cli.md``: every ``tasksim`` verb by help panel, with its help and options.
- ``results/...``, ``benchmarks/README.md``, ``cluster/README.md``: the repository's own pages,
  under the same relative paths, so their links to each other work in both places (a results
  page's figures, config and JSON come with it).
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

log = get_plugin_logger("tasksim")
ROOT = Path(__file__).resolve().parents[1]
REPO_PAGES = ["benchmarks/README.md", "cluster/README.md"]


def _md(text: str) -> str:
    """A docstring as Markdown: reST's double backticks become code spans."""
    return re.sub(r"``(.+?)``", r"`\1`", inspect.cleandoc(text or ""))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _models(tp: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (``X``, ``X | None``, ``dict[str, X]``)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in _models(arg)]


def _type(tp: Any, links: dict[type, str]) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin in (Union, types.UnionType):
        return " | ".join(_type(a, links) for a in args)
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(a, links) for a in args)}]"
    if tp in links:
        return f"[{tp.__name__}](#{_anchor(links[tp])})"
    return getattr(tp, "__name__", str(tp))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()}`"


def _sections(model: type[BaseModel], path: str, out: list[tuple[str, type[BaseModel]]]) -> None:
    out.append((path, model))
    for key, field in model.model_fields.items():
        for sub in _models(field.annotation):
            dict_valued = get_origin(field.annotation) is dict
            _sections(sub, f"{path}.{key}.<name>" if dict_valued else f"{path}.{key}", out)


def configuration_page() -> str:
    from tasksim_ray.config import PipelineConfig

    sections: list[tuple[str, type[BaseModel]]] = []
    _sections(PipelineConfig, "", sections)
    links = {model: path.lstrip(".") or "top-level-keys" for path, model in sections}
    lines = ["# Configuration reference", "",
             "Generated from the pydantic models in `tasksim_ray/config/` when the docs are built. A run's "
             "YAML maps onto these sections; an unknown key or a wrong type is a one-line error naming the key. "
             "Any key can be overridden on the command line: `--set train.max_epochs=5`.", ""]
    for path, model in sections:
        title = path.lstrip(".").replace("<", "&lt;").replace(">", "&gt;") or "Top-level keys"
        lines += [f"## {title} {{#{_anchor(links[model])}}}", ""]
        if model.__doc__:
            lines += [_md(model.__doc__), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, field in model.model_fields.items():
            if not field.description:
                log.warning(f"config key '{path.lstrip('.') + '.' if path else ''}{key}' "
                            f"({model.__name__}) has no description: add a docstring below the field")
            lines.append(f"| `{key}` | {_cell(_type(field.annotation, links))} | {_cell(_default(field))} | "
                         f"{_cell(_md(field.description or ''))} |")
        lines.append("")
    return "\n".join(lines + registries_section())


def registries_section() -> list[str]:
    """The names config validation accepts, read from the registries."""
    from tasksim_ray import registry

    lines = ["## Registered names", "",
             "Config validation reads these from `tasksim_ray/registry.py`; a name registered from user code is "
             "valid too (see [Extending](../extending.md)).", "",
             "| registry | config key | names |", "|---|---|---|",
             f"| `BACKBONES` | `model.backbone` | {', '.join(registry.BACKBONES.names())} |",
             f"| `METRICS` | `similarity.metrics` | {', '.join(registry.METRICS.names())} |",
             f"| `SOURCES` | `data.source` | {', '.join(registry.SOURCES.names())} |",
             f"| `FOUNDATION_MODELS` | `transfer.foundation`, `similarity.dataset_features.model` | "
             f"{', '.join(registry.FOUNDATION_MODELS.names())} |"]
    lines.append(f"| `STUDIES` | `transfer.studies` (a study's `config`: its section `transfer.<name>`) | "
                 f"{', '.join(registry.STUDIES.names())} |")
    return [*lines, ""]


def cli_page() -> str:
    import click
    import typer

    from tasksim_ray.cli import app

    group = typer.main.get_command(app)
    panels: dict[str, list[tuple[str, click.Command]]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        panels.setdefault(getattr(command, "rich_help_panel", None) or "Commands", []).append((name, command))
    lines = ["# Command line", "", "Generated from the `tasksim` Typer app when the docs are built; "
             "`tasksim VERB --help` prints the same. `CONFIG` is a YAML file (see "
             "[Configuration](configuration.md)); every verb that takes one also takes `--set KEY=VALUE`.", ""]
    for panel, commands in panels.items():
        lines += [f"## {panel}", ""]
        for name, command in commands:
            args = " ".join(p.human_readable_name.upper() for p in command.params if isinstance(p, click.Argument))
            lines += [f"### `tasksim {name}`", "", f"`tasksim {name} [OPTIONS] {args}`".replace(" ]", "]"), "",
                      _md(command.help or ""), ""]
            options = [p for p in command.params if isinstance(p, click.Option)]
            if options:
                lines += ["| option | default | help |", "|---|---|---|"]
                for p in options:
                    shown = "" if p.default in (None, False, ()) or p.is_flag and not p.default else f"`{p.default}`"
                    lines.append(f"| `{', '.join(p.opts)}` | {shown} | {_cell(p.help or '')} |")
                lines.append("")
    return "\n".join(lines)


def results_index() -> str:
    """``results/README.md`` is the index of the results pages."""
    return (ROOT / "results" / "README.md").read_text(encoding="utf-8")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    generated = {"reference/configuration.md": configuration_page(), "reference/cli.md": cli_page(),
                 "results/index.md": results_index()}
    pages = sorted((ROOT / "results").glob("*/*.md"))  # a page's README and the generated tables it links
    for page in [p for p in pages if p.name != "notes.md"] + [ROOT / p for p in REPO_PAGES]:
        generated[str(page.relative_to(ROOT))] = page.read_text(encoding="utf-8")
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    for path in sorted((ROOT / "results").glob("*/*")):  # what a results page links: figures, config, JSON
        if path.is_file() and path.suffix in (".png", ".yaml", ".json"):
            files.append(File.generated(config, str(path.relative_to(ROOT)), abs_src_path=str(path)))
    return files
