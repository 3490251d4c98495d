"""Faulty plugins: the core checks sample() output where it receives it, and names a plugin whose own code raises."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from cli import main
from tests.conftest import make_slices
from toolkit.registry import GENERATORS
from toolkit.train.sampling import GeneratorContractError, make_sampler
from toolkit.types import Batch, DataSpec

SIZE = 32


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory):
    """One phantom for the module's CLI runs (it is generated once)."""
    return tmp_path_factory.mktemp("phantom-cache")


def toy_with(sample_fn):
    """The test-only ``toy`` generator with its sample() replaced by ``sample_fn(n, cond, masks, generator)``."""
    cls = GENERATORS.get("toy")
    gen = cls(DataSpec(image_size=SIZE), device="cpu", **cls.tiny)
    gen.sample = sample_fn
    return gen


def good(n, cond=None, masks=None, generator=None):
    image = torch.rand(n, 1, SIZE, SIZE, generator=generator) * 2 - 1
    return Batch(image, (image > 0).float(), None)


def message(sample_fn, n=6) -> str:
    data = make_slices(n_patients=2, slices_per_patient=4, size=SIZE)
    with pytest.raises(GeneratorContractError) as caught:
        make_sampler(toy_with(sample_fn), data)(n, torch.Generator().manual_seed(0))
    return str(caught.value)


def test_a_contract_keeping_sample_passes():
    data = make_slices(n_patients=2, slices_per_patient=4, size=SIZE)
    out = make_sampler(toy_with(good), data)(5, torch.Generator().manual_seed(0))
    assert out.image.shape == (5, 1, SIZE, SIZE)


@pytest.mark.parametrize("breach, expected", [
    (lambda b: Batch(b.image, b.mask[..., :29, :29], None), "returned masks of 29 x 29 for 32 x 32 images"),
    (lambda b: Batch(b.image[..., :16, :16], b.mask[..., :16, :16], None), "images of 16 x 16 for data of 32 x 32"),
    (lambda b: Batch(b.image[:4], b.mask[:4], None), "returned 4 images and 4 masks when asked for 6 pairs"),
    (lambda b: Batch(b.image.repeat(1, 3, 1, 1), b.mask, None), "images with 3 channel(s); the data has 1"),
    (lambda b: Batch(b.image, b.mask.repeat(1, 2, 1, 1), None), "masks with 2 channels"),
    (lambda b: Batch(b.image[:, 0], b.mask, None), "images of shape [6, 32, 32]"),
    (lambda b: Batch(b.image.index_put((torch.tensor([2]),), torch.tensor(float("nan"))), b.mask, None),
     "NaN or infinite value(s) (in 1 of 6 images)"),
    (lambda b: Batch(b.image * 3, b.mask, None), "outside [-1, 1] (a missing tanh or clamp?)"),
    (lambda b: Batch(b.image, b.mask * 0.5, None), "value(s) other than 0 and 1"),
    (lambda b: Batch(b.image, b.mask, torch.zeros(6, 3)), "a condition of shape [6, 3]; expected [6, 2] (spec.cond_dim)"),
    (lambda b: b.image, "returned a Tensor, not a toolkit.types.Batch"),
])
def test_each_breach_is_named_with_the_generator_and_what_was_wrong(breach, expected):
    text = message(lambda n, cond=None, masks=None, generator=None: breach(good(n, generator=generator)))
    assert text.startswith("generator 'toy': sample() ")
    assert expected in text, text


def test_a_mask_to_image_generator_must_return_the_masks_it_was_given():
    cls = GENERATORS.get("toy_mask2image")
    gen = cls(DataSpec(image_size=SIZE), device="cpu")
    real_sample = gen.sample
    gen.sample = lambda n, cond=None, masks=None, generator=None: Batch(
        real_sample(n, cond, masks, generator).image, 1 - masks, cond)
    data = make_slices(n_patients=2, slices_per_patient=4, size=SIZE)
    with pytest.raises(GeneratorContractError, match="was given masks but returned other masks"):
        make_sampler(gen, data)(4, torch.Generator().manual_seed(0))


BROKEN_PLUGIN = '''
import torch
from toolkit.registry import GENERATORS
from toolkit.types import Batch


@GENERATORS.register("{name}")
class Broken(GENERATORS.get("toy")):
    def sample(self, n, cond=None, masks=None, generator=None):
        out = super().sample(n, cond, masks, generator)
        {body}
'''


@pytest.mark.parametrize("name, body, expected", [
    ("mygen_masks", "return Batch(out.image, out.mask[..., 3:, 3:], None)", "returned masks of 61 x 61 for 64 x 64"),
    ("mygen_nan", "return Batch(out.image * float('nan'), out.mask, None)", "NaN or infinite"),
])
def test_the_cli_stops_with_one_error_line_before_any_evaluator_and_keeps_the_checkpoint(
        tmp_path, monkeypatch, phantom_cache, name, body, expected):
    monkeypatch.setenv("GANSEG_CACHE", str(phantom_cache))
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(BROKEN_PLUGIN).format(name=name, body=body))
    result = CliRunner().invoke(main, [
        "run", "-g", name, "-p", "smoke", "--out", str(tmp_path / "runs"), "--name", "r", "-q", "--plugins",
        str(folder), "--set", "run.evaluators=[toy_stats]", "--set", "data.phantom_patients=8",
        "--set", "data.image_size=64"])
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"generator '{name}': sample() " in error[0] and expected in error[0], result.output
    assert "Traceback" not in result.output
    run_dir = tmp_path / "runs" / "r"
    assert (run_dir / "checkpoints" / "last.pt").exists()  # training is kept; a fixed sample() resumes from it
    assert not (run_dir / "synthetic" / "synthetic.npz").exists()
    results = run_dir / "results.json"
    assert not results.exists() or "evaluation" not in json.loads(results.read_text())


RAISING_PLUGIN = '''
from toolkit.registry import GENERATORS


@GENERATORS.register("{name}")
class Raising(GENERATORS.get("toy")):
    def {method}(self, *args, **kwargs):
        if {condition}:
            return {{}}["no such key"]  # the plugin's own bug
        return super().{method}(*args, **kwargs)
'''


@pytest.mark.parametrize("name, method, condition, expected", [
    ("buggy_step", "train_step", "args[1] == 3", "train_step raised KeyError at step 3"),
    ("buggy_sample", "sample", "True", "sample(32) raised KeyError"),  # the step-4 TensorBoard grid, 32 pairs
])
def test_a_plugin_bug_keeps_its_traceback_under_one_line_naming_plugin_and_step(
        tmp_path, monkeypatch, phantom_cache, name, method, condition, expected):
    monkeypatch.setenv("GANSEG_CACHE", str(phantom_cache))
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(RAISING_PLUGIN).format(
        name=name, method=method, condition=condition))
    result = CliRunner().invoke(main, [
        "run", "-g", name, "-p", "smoke", "--out", str(tmp_path / "runs"), "--name", "r", "-q", "--plugins",
        str(folder), "--set", "run.evaluators=[toy_stats]", "--set", "data.phantom_patients=8",
        "--set", "train.checkpoint_every=2", "--set", "train.steps=4"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    first = lines[0]
    assert first.startswith(f"Error: generator '{name}': {expected}"), result.output
    assert "Traceback (most recent call last)" in result.output  # the author's traceback, under that line
    assert f"{name}.py" in result.output and "KeyError: 'no such key'" in result.output
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.pt"
    assert last.exists() and (str(last) in first or method == "sample")
    assert torch.load(last, weights_only=True)["step"] == 2  # the last good checkpoint, not a half-done step
