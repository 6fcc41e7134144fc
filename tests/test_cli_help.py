"""Every help text of the ``tasksim`` command renders whole: the top-level panels in order, and each
verb's docstring and option help word for word (Markdown must not eat brackets, angle brackets or
emphasis markers, as it once ate ``[methods]`` from ``tasksim study --help``)."""

from __future__ import annotations

import inspect
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.cli.app import PANEL_STAGES, PANEL_STUDIES

RUNNER = CliRunner()
ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
MAIN_VERBS = ["run", "demo", "serve", "submit"]


def _flat(text: str) -> str:
    """Rendered help without the panels' box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _expected(help_text: str) -> str:
    """A help string as Markdown renders it: code spans lose their backticks, lines are joined."""
    return " ".join(inspect.cleandoc(help_text).replace("`", "").split())


def _help(*args: str) -> str:
    result = RUNNER.invoke(app, [*args, "--help"], env=ENV, prog_name="tasksim")
    assert result.exit_code == 0, result.output
    return result.output


COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def test_top_level_help_groups_the_verbs() -> None:
    out = _help()
    flat = _flat(out)
    assert "Usage: tasksim" in flat
    panels = re.findall(r"╭─ (.+?) ─", out)
    assert panels[:2] == ["Options", "Commands"], panels
    assert PANEL_STAGES in panels and PANEL_STUDIES in panels
    commands_panel = out.split("╭─ Commands ")[1].split("╰")[0]
    listed = re.findall(r"^│ (\S+)", commands_panel, flags=re.M)
    assert listed[:4] == MAIN_VERBS, listed
    stages_panel = out.split(f"╭─ {PANEL_STAGES} ")[1].split("╰")[0]
    for verb in ("tasks", "preprocess", "featurize", "probe", "embed", "similarity"):
        assert re.search(rf"^│ {verb}\s", stages_panel, flags=re.M), f"{verb} not in the {PANEL_STAGES} panel"
    for name in COMMANDS:
        assert re.search(rf"^│ {re.escape(name)}\s", out, flags=re.M), f"{name} missing from tasksim --help"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_verb_help_renders_whole(name: str) -> None:
    command = COMMANDS[name]
    flat = _flat(_help(name))
    assert f"Usage: tasksim {name} [OPTIONS]" in flat
    assert _expected(command.help or "") in flat, f"tasksim {name} --help lost part of its docstring"
    for param in command.params:
        if isinstance(param, click.Option) and param.help:
            assert _expected(param.help) in flat, f"tasksim {name} --help: {param.name}'s help is cut"
    for leftover in ("``", "[/", "[bold"):
        assert leftover not in flat, f"tasksim {name} --help shows raw markup {leftover!r}"
