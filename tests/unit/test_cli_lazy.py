"""The lazily imported subcommands of `flashsale` resolve, and --help lists them unloaded."""

from __future__ import annotations

import click
from click.testing import CliRunner

from infra.cli import LAZY_COMMANDS, main
from infra.lazygroup import LazyGroup


def test_every_lazy_command_loads_under_its_name() -> None:
    assert isinstance(main, LazyGroup)
    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name


def test_help_lists_lazy_commands_with_their_stated_help() -> None:
    fresh = LazyGroup(name="flashsale", lazy_commands={"nothing": ("no.such.module:cmd", "Help.")})
    result = CliRunner().invoke(fresh, ["--help"])
    assert result.exit_code == 0, result.output
    assert "nothing" in result.output and "Help." in result.output
