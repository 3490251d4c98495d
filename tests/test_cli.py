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


def test_data_phantom_then_inspect(tmp_path):
    runner = CliRunner()
    made = runner.invoke(main, ["data", "phantom", "--out", str(tmp_path / "ph"), "--patients", "2", "--seed", "1"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "ph" / "dataset.json").exists()
    seen = runner.invoke(main, ["data", "inspect", "--data", str(tmp_path / "ph"), "--json"])
    assert seen.exit_code == 0, seen.output
    info = json.loads(seen.output)
    assert info["layout"] == "msd" and info["patients"] == 2
    bad = runner.invoke(main, ["data", "inspect", "--data", str(tmp_path), "--layout", "promise12"])
    assert bad.exit_code != 0 and "Error:" in bad.output and "Traceback" not in bad.output
    # Data that would stop a run (an empty mask): reported, and a non-zero exit so a script can gate on it.
    import nibabel as nib
    import numpy as np

    label = tmp_path / "ph" / "labelsTr" / "prostate_01.nii.gz"
    img = nib.load(str(label))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(label))
    empty = runner.invoke(main, ["data", "inspect", "--data", str(tmp_path / "ph")])
    assert empty.exit_code == 1 and "PROBLEM" in empty.output and "data.empty_mask: skip" in empty.output
