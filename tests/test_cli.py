from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

import toolkit
from cli import main


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in _commands(main)], ids=" ".join)
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = dict(_commands(main))[path]
    assert command.help and len(command.help.strip()) > 20, f"{' '.join(path)} needs a real docstring"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.name != "help":
            assert param.help, f"option {param.opts} of {' '.join(path)} has no help"


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and toolkit.__version__ in result.output


def test_list_plain_and_json():
    runner = CliRunner()
    plain = runner.invoke(main, ["list"])
    assert plain.exit_code == 0 and "generators:" in plain.output and "toy" in plain.output
    report = json.loads(runner.invoke(main, ["list", "--json"]).output)
    assert {"generators", "evaluators", "errors"} <= set(report)
    toy = next(e for e in report["evaluators"] if e["name"] == "toy_stats")
    assert toy["primary"] == "mean_gap" and toy["higher_is_better"] is False


def test_resume_needs_a_name():
    result = CliRunner().invoke(main, ["run", "--resume"])
    assert result.exit_code != 0 and "--name" in result.output
