from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from tests.conftest import make_slices
from tests.test_contract import tiny_context
from toolkit.registry import EVALUATORS, GENERATORS, load_plugin_dir
from toolkit.types import DataSpec


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
