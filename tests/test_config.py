from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from cli import main
from toolkit.config import ConfigError, check_type, parse_override, resolve

# Tests use only the test-only plugins, whatever built-ins exist.
TOY = ["run.evaluators=[toy_stats]"]


def test_layers_merge_in_order(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  steps: 7\n  batch_size: 3\n")
    cfg = resolve(generator="toy", profile="smoke", config_files=[user], overrides=[*TOY, "train.steps=9"])
    assert cfg["train"]["steps"] == 9  # --set beats the user file
    assert cfg["train"]["batch_size"] == 3  # the user file beats the profile
    assert cfg["split"]["n_train_patients"] == 4  # the profile beats the defaults
    assert cfg["data"]["image_size"] == 64  # defaults fill the rest
    assert cfg["run"]["generator"] == "toy"
    assert cfg.source_of("train.steps") == "--set train.steps=9"
    assert cfg.source_of("train.batch_size") == str(user)


def test_generator_layer_applies(tmp_path):
    configs = tmp_path / "configs"
    (configs / "profiles").mkdir(parents=True)
    (configs / "generators").mkdir()
    import shutil

    from toolkit.config import CONFIG_DIR

    shutil.copy(CONFIG_DIR / "default.yaml", configs / "default.yaml")
    (configs / "profiles" / "quick.yaml").write_text("train:\n  steps: 5\n")
    (configs / "generators" / "toy.yaml").write_text("generator:\n  latent_dim: 3\ntrain:\n  steps: 6\n")
    cfg = resolve(generator="toy", config_dir=configs, overrides=[*TOY, "generator.lr=0.5"])
    assert cfg["generator"] == {"latent_dim": 3, "lr": 0.5}
    assert cfg["train"]["steps"] == 6
    assert cfg.source_of("generator.latent_dim") == "configs/generators/toy.yaml"


def test_set_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as info:
        resolve(generator="toy", overrides=[*TOY, "generator.lr=abc"])
    message = str(info.value)
    assert "generator.lr" in message and "a number" in message and "'abc'" in message and "--set" in message


def test_set_unknown_plugin_key_names_valid_keys():
    with pytest.raises(ConfigError) as info:
        resolve(generator="toy", overrides=[*TOY, "generator.no_such_key=1"])
    message = str(info.value)
    assert "generator.no_such_key" in message
    assert "latent_dim" in message and "lr" in message


def test_unknown_core_key_suggests_closest(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("train:\n  stepz: 10\n")
    with pytest.raises(ConfigError) as info:
        resolve(generator="toy", config_files=[user], overrides=TOY)
    message = str(info.value)
    assert "train.stepz" in message and str(user) in message and "Did you mean 'steps'?" in message


def test_core_type_errors():
    with pytest.raises(ConfigError, match="train.steps.*integer"):
        resolve(generator="toy", overrides=[*TOY, "train.steps=1.5"])
    with pytest.raises(ConfigError, match="run.tiny.*true or false"):
        resolve(generator="toy", overrides=[*TOY, "run.tiny=3"])
    # int is accepted where the default is a float
    assert resolve(generator="toy", overrides=[*TOY, "run.synthetic_ratio=2"])["run"]["synthetic_ratio"] == 2


def test_unknown_generator_and_evaluator():
    with pytest.raises(ConfigError, match="Did you mean 'toy'"):
        resolve(generator="tooy", overrides=TOY)
    with pytest.raises(ConfigError, match="unknown evaluator 'nope'"):
        resolve(generator="toy", overrides=["run.evaluators=[nope]"])
    with pytest.raises(ConfigError, match="evaluators.toy_stats.scal"):
        resolve(generator="toy", overrides=["run.evaluators=[toy_stats]", "evaluators.toy_stats.scal=2"])


def test_unknown_profile_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'quik'.*quick"):
        resolve(generator="toy", profile="quik")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(generator="toy", config_files=[bad])
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve(generator="toy", config_files=[lst])


@pytest.mark.parametrize("expr", ["novalue", "=3", "a..b=1"])
def test_bad_override_syntax(expr):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(expr)


def test_check_type():
    from typing import Literal, Optional

    assert check_type(1, float) and not check_type(True, int) and not check_type("x", float)
    assert check_type(None, Optional[int]) and check_type(3, Optional[int])  # noqa: UP045
    assert check_type(None, int | None) and not check_type("x", int | None)
    assert check_type("a", Literal["a", "b"]) and not check_type("c", Literal["a", "b"])
    assert check_type([1, 2], list[int]) and not check_type([1, "x"], list[int])
    assert check_type([1, 2], tuple[int, int]) and not check_type([1], tuple[int, int])


def test_cli_set_errors_are_clean():
    runner = CliRunner()
    for expr, expected in [("generator.lr=abc", "generator.lr"), ("generator.no_such_key=1", "no_such_key")]:
        result = runner.invoke(main, ["run", "--generator", "toy", "--set", TOY[0], "--set", expr, "--dry-run"])
        assert result.exit_code == 1, result.output
        assert "Error:" in result.output and expected in result.output
        assert "Traceback" not in result.output


def test_dry_run_prints_resolved_config():
    result = CliRunner().invoke(main, ["run", "-g", "toy", "-p", "smoke", "--set", TOY[0], "--set", "train.steps=3", "--dry-run"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["steps"] == 3 and printed["run"]["generator"] == "toy"


@pytest.mark.parametrize("override, key, allowed", [
    ("train.steps=-3", "train.steps", ">= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every", ">= 1"),
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("run.synthetic_ratio=-1", "run.synthetic_ratio", "> 0"),
    ("data.crop_fraction=1.5", "data.crop_fraction", "<= 1"),
    ("split.n_train_patients=0", "split.n_train_patients", ">= 1"),
    ("seg.lr=0", "seg.lr", "> 0"),
    ("masks.source=deformed", "masks.source", "deformed_real"),
    ("train.precision=fp16", "train.precision", "one of auto, fp32, bf16"),
])
def test_values_out_of_range_are_refused_before_any_work(override, key, allowed):
    with pytest.raises(ConfigError) as info:
        resolve(generator="toy", overrides=[*TOY, override])
    message = str(info.value)
    assert key in message and allowed in message, message


def test_plugins_declare_ranges_in_their_signatures():
    with pytest.raises(ConfigError, match=r"evaluators.dice_gain.bootstrap.*>= 100.*got 10"):
        resolve(generator="toy", overrides=[*TOY, "evaluators.dice_gain.bootstrap=10"])


def test_moved_keys_point_to_their_new_place():
    with pytest.raises(ConfigError, match="evaluators.dice_gain.steps.*moved to 'seg.steps'"):
        resolve(generator="toy", overrides=[*TOY, "evaluators.dice_gain.steps=100"])
    with pytest.raises(ConfigError, match="train.amp.*moved to 'train.precision'"):
        resolve(generator="toy", overrides=[*TOY, "train.amp=bf16"])


def test_default_yaml_says_what_the_typed_settings_say():
    from toolkit.config import CONFIG_DIR, load_yaml
    from toolkit.settings import defaults_dict

    assert load_yaml(CONFIG_DIR / "default.yaml") == defaults_dict()


def test_typed_sections_and_replace():
    config = resolve(generator="toy", overrides=TOY)
    assert config.train.steps == config["train"]["steps"] and isinstance(config.split.seed, int)
    cell = config.replace({"split.n_train_patients": 2, "seg.steps": 7})
    assert cell.split.n_train_patients == 2 and cell.seg.steps == 7 and cell["seg"]["steps"] == 7
    assert config.split.n_train_patients != 2 or config.seg.steps != 7  # the original is unchanged
    with pytest.raises(ConfigError, match="split.n_train_patients"):
        config.replace({"split.n_train_patients": -1})


@pytest.mark.parametrize("text, expected", [("on", True), ("off", False), ("auto", False), ("'on'", True)])
def test_channels_last_accepts_yaml_bare_on_off(text, expected):
    # YAML 1.1 reads a bare on/off as a bool: the setting takes either spelling.
    from toolkit.runtime import resolve_channels_last

    config = resolve(generator="toy", overrides=[*TOY, f"train.channels_last={text}"])
    assert resolve_channels_last(config.train.channels_last, torch.device("cpu")) is expected


def _literal_keys() -> list[tuple[str, str, tuple]]:
    import typing

    from toolkit.registry import GENERATORS
    from toolkit.schema import _strip, plugin_params

    out = []
    for name in GENERATORS.names():
        for key, (hint, _) in plugin_params(GENERATORS.get(name)).items():
            base, _ = _strip(hint)
            if typing.get_origin(base) is typing.Literal:
                out.append((name, key, typing.get_args(base)))
    return out


@pytest.mark.parametrize("name, key, choices", _literal_keys())
def test_generator_literal_settings_are_refused_by_the_schema_naming_the_key(name, key, choices):
    # Generators write no checks of their own for Literal settings: the signature is the schema.
    with pytest.raises(ConfigError) as info:
        resolve(generator=name, profile="smoke", overrides=[f"generator.{key}=not_a_choice"])
    message = str(info.value)
    assert f"'generator.{key}'" in message and "one of " + ", ".join(map(str, choices)) in message, message
    assert "not_a_choice" in message and "--set generator." in message, message


def _generator_yamls() -> list:
    from toolkit.config import CONFIG_DIR

    return sorted((CONFIG_DIR / "generators").glob("*.yaml"))


@pytest.mark.parametrize("path", _generator_yamls(), ids=lambda p: p.stem)
def test_generator_yaml_holds_only_real_overrides(path):
    # The constructor is the single source of defaults: a key equal to it has no place in the yaml.
    from toolkit.config import load_yaml
    from toolkit.registry import GENERATORS
    from toolkit.schema import plugin_params

    params = plugin_params(GENERATORS.get(path.stem))
    for key, value in (load_yaml(path).get("generator") or {}).items():
        default = params[key][1]
        default = list(default) if isinstance(default, tuple) else default
        assert value != default, f"{path.name}: generator.{key} equals the constructor default {default!r}"
