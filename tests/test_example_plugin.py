"""examples/ganseg_example_plugin: its entry point loads through the registry (nothing is installed)."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

import tests.test_contract as contract
import toolkit.registry as registry_module
from cli import main
from tests.conftest import make_slices
from toolkit.registry import Registry

PACKAGE = Path(__file__).parent.parent / "examples" / "ganseg_example_plugin"


def declared_entry_points() -> list[EntryPoint]:
    """The ``ganseg.generators`` entry points exactly as the package's pyproject.toml declares them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    group = project["entry-points"]["ganseg.generators"]
    return [EntryPoint(name, value, "ganseg.generators") for name, value in group.items()]


def test_example_package_registers_its_generator_through_the_entry_point(monkeypatch, tmp_path):
    points = declared_entry_points()
    assert [ep.name for ep in points] == ["example_vae"]
    # What `pip install` would give: the package importable and its entry points visible to importlib.metadata.
    monkeypatch.syspath_prepend(str(PACKAGE))
    for module in [m for m in sys.modules if m.startswith("ganseg_example_plugin")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: points if group == "ganseg.generators" else [])
    reg = Registry("generator", "plugins.generators", "ganseg.generators")
    monkeypatch.setattr(registry_module, "GENERATORS", reg)  # the module registers into toolkit.registry.GENERATORS
    monkeypatch.setattr(contract, "GENERATORS", reg)
    assert "example_vae" in reg.names(), reg.errors
    entry = next(e for e in reg.entries() if e.name == "example_vae")
    assert entry.source == "entry point example_vae = ganseg_example_plugin.example_vae"
    listed = CliRunner().invoke(main, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "example_vae" in [g["name"] for g in json.loads(listed.output)["generators"]]
    data = make_slices(n_patients=3, slices_per_patient=6, size=contract.SIZE)
    contract.test_generator_trains_and_samples("example_vae", data)
    contract.test_generator_sampling_is_deterministic("example_vae", data)
    contract.test_generator_state_round_trip("example_vae", data, tmp_path / "state")
    contract.test_killed_and_resumed_run_matches_uninterrupted("example_vae", data, tmp_path / "resume")
