from __future__ import annotations

import ast
import inspect
import typing

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tests.test_contract as contract
from cli import main
from tests.conftest import make_slices
from tests.test_contract import tiny_context
from toolkit.data.masks import DeformedMasks
from toolkit.plugin import TrainContext
from toolkit.registry import EVALUATORS, GENERATORS, load_plugin_dir
from toolkit.scaffold import CLASS_TOKEN, GENERATOR_TEMPLATES, NAME_TOKEN, TEMPLATES, template_path
from toolkit.schema import plugin_params
from toolkit.types import Batch, DataSpec


def test_new_plugins_work_out_of_the_box(tmp_path):
    runner = CliRunner()
    folder = tmp_path / "mine"
    for name, kind in (("scaffold_gan", "generator"), ("scaffold_metric", "evaluator")):
        result = runner.invoke(main, ["new-plugin", name, "--kind", kind, "--out", str(folder)])
        assert result.exit_code == 0, result.output
        assert (folder / f"{name}.py").exists()
    again = runner.invoke(main, ["new-plugin", "scaffold_gan", "--out", str(folder)])
    assert again.exit_code != 0 and "already exists" in again.output
    try:
        load_plugin_dir(folder)
        assert not [e for e in GENERATORS.errors if "scaffold" in e.source], GENERATORS.errors
        gen_cls = GENERATORS.get("scaffold_gan")
        for size in (32, 64):
            gen = gen_cls(DataSpec(image_size=size), **gen_cls.tiny)
            data = make_slices(size=size)
            gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data)))
            losses = gen.train_step(data.to_batch(np.arange(4)), 0)
            assert all(np.isfinite(v) for v in losses.values())
            out = gen.sample(3, generator=torch.Generator().manual_seed(0))
            assert out.image.shape == (3, 1, size, size)
        evaluator = EVALUATORS.get("scaffold_metric")()
        values = evaluator.evaluate(tiny_context(tmp_path / "ctx"))
        assert set(evaluator.metrics) <= set(values)
    finally:
        GENERATORS.unregister("scaffold_gan")
        EVALUATORS.unregister("scaffold_metric")


@pytest.mark.parametrize("name", ["Bad", "1abc", "class", "a-b"])
def test_new_plugin_rejects_bad_names(name, tmp_path):
    result = CliRunner().invoke(main, ["new-plugin", name, "--out", str(tmp_path)])
    assert result.exit_code != 0 and "lowercase Python identifier" in result.output


@pytest.mark.parametrize("template", sorted(GENERATOR_TEMPLATES))
def test_each_generator_template_passes_the_contract(template, tmp_path):
    """Each template, written as a user would write it, passes the registry-wide contract test as written."""
    name = f"tmpl_{template}"
    folder = tmp_path / "mine"
    result = CliRunner().invoke(main, ["new-plugin", name, "--template", template, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    text = (folder / f"{name}.py").read_text()
    assert len(text.splitlines()) < 100 and "Tmpl " not in text  # no title made from the file name
    assert NAME_TOKEN not in text and CLASS_TOKEN not in text  # every placeholder replaced
    try:
        load_plugin_dir(folder)
        assert not [e for e in GENERATORS.errors if name in e.source], GENERATORS.errors
        cls = GENERATORS.get(name)
        assert cls.__name__ == "".join(part.title() for part in name.split("_"))
        assert cls.needs_masks == (template == "mask2image")
        # Typed like the built-ins: every setting has a real type hint and a default (the config schema).
        params = plugin_params(cls)
        assert params and all(hint is not typing.Any and default is not inspect.Parameter.empty
                              for hint, default in params.values()), params
        data = make_slices(n_patients=3, slices_per_patient=6, size=contract.SIZE)
        contract.test_generator_trains_and_samples(name, data)
        if cls.needs_masks:
            contract.test_mask_to_image_generator_renders_the_given_masks(name, data)
        contract.test_generator_sampling_is_deterministic(name, data)
        contract.test_generator_state_round_trip(name, data, tmp_path / "state")
        contract.test_killed_and_resumed_run_matches_uninterrupted(name, data, tmp_path / "resume")
        # spec.channels and spec.cond_dim are honoured, not assumed to be 1 and 2.
        spec = DataSpec(image_size=16, channels=3, cond_dim=5)
        gen = cls(spec, **cls.tiny)
        wide = make_slices(n_patients=2, slices_per_patient=4, size=16).to_batch(np.arange(4))
        batch = type(wide)(wide.image.repeat(1, 3, 1, 1), wide.mask, torch.rand(4, 5))
        gen.setup(TrainContext(train=make_slices(size=16), mask_source=None))
        assert all(np.isfinite(v) for v in gen.train_step(batch, 0).values())
        out = gen.sample(2, cond=torch.rand(2, 5), masks=wide.mask[:2] if cls.needs_masks else None,
                         generator=torch.Generator().manual_seed(0))
        assert out.image.shape == (2, 3, 16, 16) and out.mask.shape == (2, 1, 16, 16)
        check_condition_is_never_invented(cls, data)
    finally:
        GENERATORS.unregister(name)


def check_condition_is_never_invented(cls: type, data) -> None:
    """A template's ``cond`` comes from the data (or its mask), never zeros: a missing one is drawn or refused."""
    gen = cls(DataSpec(image_size=contract.SIZE), **cls.tiny)
    batch = data.to_batch(np.arange(4))
    with pytest.raises(ValueError, match="batch.cond"):
        gen.train_step(Batch(batch.image, batch.mask, None), 0)
    if cls.needs_masks:
        # Masks without their conditions are refused: a condition describes its own mask (e.g. its area).
        gen.setup(TrainContext(train=data, mask_source=DeformedMasks(data)))
        with pytest.raises(ValueError, match="cond"):
            gen.sample(2, masks=batch.mask[:2], generator=torch.Generator().manual_seed(0))
        return
    # A joint model draws missing conditions from the training slices, as the core's sampler does...
    with pytest.raises(RuntimeError, match=r"setup\(ctx\)"):
        gen.sample(2, generator=torch.Generator().manual_seed(0))  # ...so without setup() it has none to draw
    gen.setup(TrainContext(train=data, mask_source=None))
    gen.eval()
    with torch.no_grad():
        out = gen.sample(16, generator=torch.Generator().manual_seed(0))
        again = gen.sample(16, generator=torch.Generator().manual_seed(0))
    real = torch.from_numpy(data.cond).float()
    assert all((row == real).all(dim=1).any() for row in out.cond), "sample() made up a condition"
    assert torch.equal(out.cond, again.cond) and torch.equal(out.image, again.image)


@pytest.mark.parametrize("path", sorted(p for p in TEMPLATES.iterdir() if p.is_file()), ids=lambda p: p.name)
def test_raw_template_is_plain_python_with_one_placeholder(path):
    """The template file itself is Python as written: no str.format escaping, just the name to replace."""
    expected = {template_path("generator", t) for t in GENERATOR_TEMPLATES} | {template_path("evaluator")}
    assert path in expected, f"{path.name} is no template new-plugin writes from (valid: {sorted(expected)})"
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    assert "{{" not in text and "}}" not in text and "{name}" not in text and "{cls}" not in text
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert [c.name for c in classes] == [CLASS_TOKEN]
    (decorator,) = classes[0].decorator_list
    assert isinstance(decorator, ast.Call) and ast.literal_eval(decorator.args[0]) == NAME_TOKEN


def test_every_template_new_plugin_names_exists():
    for path in [template_path("generator", t) for t in GENERATOR_TEMPLATES] + [template_path("evaluator")]:
        assert path.is_file(), path


def test_evaluator_template_passes_the_contract(tmp_path):
    name = "tmpl_metric"
    result = CliRunner().invoke(main, ["new-plugin", name, "--kind", "evaluator", "--out", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "mine" / f"{name}.py").read_text()
    assert NAME_TOKEN not in text and CLASS_TOKEN not in text
    try:
        load_plugin_dir(tmp_path / "mine")
        assert not [e for e in EVALUATORS.errors if name in e.source], EVALUATORS.errors
        cls = EVALUATORS.get(name)
        assert cls.metrics == (f"{name}_intensity_gap", f"{name}_gland_share_gap")
        assert all(hint is not typing.Any for hint, _ in plugin_params(cls).values())
        contract.test_evaluator_contract(name, tmp_path / "contract")
    finally:
        EVALUATORS.unregister(name)


def test_template_option_is_for_generators(tmp_path):
    result = CliRunner().invoke(main, ["new-plugin", "x_metric", "--kind", "evaluator", "--template", "gan",
                                       "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--template" in result.output and not (tmp_path / "x_metric.py").exists()
