from __future__ import annotations

import json
import textwrap
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

import toolkit.registry as registry_module
from cli import main
from toolkit.registry import EVALUATORS, GENERATORS, Registry, RegistryError, load_plugin_dir


def fresh() -> Registry:
    reg = Registry("generator", "plugins.generators", "ganseg.test_no_such_group")
    reg._discovered = True  # no built-ins: these tests are about the mechanism
    return reg


def test_register_and_get():
    reg = fresh()

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert Alpha.registry_name == "alpha"


def test_duplicate_name_is_an_error():
    reg = fresh()
    reg.register("alpha")(type("A", (), {}))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha")(type("B", (), {}))


def test_unknown_name_lists_valid_and_closest():
    reg = fresh()
    reg.register("vaegan")(type("A", (), {}))
    reg.register("pix2pix")(type("B", (), {}))
    with pytest.raises(RegistryError) as info:
        reg.get("vaegn")
    message = str(info.value)
    assert "Did you mean 'vaegan'?" in message
    assert "pix2pix" in message and "vaegan" in message


@pytest.mark.parametrize("bad", ["", "VAE", 3])
def test_names_are_lowercase_strings(bad):
    with pytest.raises(ValueError):
        fresh().register(bad)


GOOD = """
from toolkit.plugin import Evaluator
from toolkit.registry import EVALUATORS

@EVALUATORS.register("{name}")
class Dropped(Evaluator):
    '''A dropped-in evaluator.'''
    metrics = ("x",)
    primary = "x"
    def evaluate(self, ctx):
        return {{"x": 1.0}}
"""


def test_plugin_dir_loads_good_and_reports_broken(tmp_path):
    (tmp_path / "dropped_good.py").write_text(GOOD.format(name="dropped_good"))
    (tmp_path / "dropped_broken.py").write_text("import no_such_module_anywhere\n")
    try:
        load_plugin_dir(tmp_path)
        assert "dropped_good" in EVALUATORS
        good = next(e for e in EVALUATORS.entries() if e.name == "dropped_good")
        assert good.source == f"file {tmp_path / 'dropped_good.py'}"  # not "builtin": list names the file
        sources = [e.source for e in EVALUATORS.errors]
        assert any("dropped_broken.py" in s for s in sources)
        assert any("No module named 'no_such_module_anywhere'" in e.error for e in GENERATORS.errors)
        result = CliRunner().invoke(main, ["list", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert "dropped_good" in [e["name"] for e in report["evaluators"]]
        assert any("dropped_broken.py" in e["source"] for e in report["errors"])
    finally:
        EVALUATORS.unregister("dropped_good")
        GENERATORS.errors[:] = [e for e in GENERATORS.errors if "dropped_broken" not in e.source]
        EVALUATORS.errors[:] = [e for e in EVALUATORS.errors if "dropped_broken" not in e.source]


def test_list_with_plugins_option(tmp_path):
    (tmp_path / "cli_dropped.py").write_text(GOOD.format(name="cli_dropped"))
    try:
        result = CliRunner().invoke(main, ["list", "--plugins", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "cli_dropped" in result.output
    finally:
        EVALUATORS.unregister("cli_dropped")


def test_missing_plugin_dir_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["list", "--plugins", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "nope" in result.output


def test_entry_point_plugins_are_found_and_broken_ones_reported(tmp_path, monkeypatch):
    pkg = tmp_path / "thirdparty_gen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from toolkit.registry import GENERATORS

        @GENERATORS.register("thirdparty")
        class ThirdParty:
            '''Installed through an entry point.'''
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("thirdparty", "thirdparty_gen", "ganseg.generators"),
        EntryPoint("broken", "thirdparty_missing_module", "ganseg.generators"),
    ]
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: points if group == "ganseg.generators" else [])
    reg = Registry("generator", "plugins.generators", "ganseg.generators")
    # The package registers into toolkit.registry.GENERATORS; point that at a fresh registry.
    monkeypatch.setattr(registry_module, "GENERATORS", reg)
    names = reg.names()
    assert "thirdparty" in names, reg.errors
    assert any("broken" in e.source and "thirdparty_missing_module" in e.error for e in reg.errors)
    # Discovery happens once.
    reg.discover()
    assert sum("broken" in e.source for e in reg.errors) == 1


def test_builtin_modules_load_in_isolation(monkeypatch):
    """A broken built-in module is reported and does not hide the others."""
    import plugins.generators as package

    monkeypatch.setattr(package, "MODULES", ("no_such_builtin",) + tuple(package.MODULES), raising=False)
    reg = Registry("generator", "plugins.generators", "ganseg.test_no_such_group")
    reg.names()
    assert any("no_such_builtin" in e.source for e in reg.errors)
