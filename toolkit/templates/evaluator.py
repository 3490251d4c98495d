"""``my_plugin``: a ganseg evaluator (start yours from here).

This starting point compares simple statistics of the synthetic set with the real training slices:
an intensity percentile and the share of slices that show the gland. Replace them with your metric.

Use, DIR being this file's folder: ``python cli.py list --plugins DIR``, then
``python cli.py evaluate --run runs/NAME --evaluators my_plugin --plugins DIR``. The registry-wide
contract test (``GANSEG_PLUGINS=DIR python -m pytest tests/test_contract.py``) covers it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np

from toolkit.plugin import EvalContext, Evaluator
from toolkit.registry import EVALUATORS
from toolkit.schema import Range


@EVALUATORS.register("my_plugin")
class MyPlugin(Evaluator):
    """Intensity and gland-share gaps to the real training slices (new-plugin --kind evaluator)."""

    metrics: ClassVar[tuple[str, ...]] = ("my_plugin_intensity_gap", "my_plugin_gland_share_gap")
    primary: ClassVar[str] = "my_plugin_intensity_gap"
    higher_is_better: ClassVar[bool] = False
    tiny: ClassVar[dict[str, Any]] = {}  # tests and the smoke profile

    def __init__(
        self, *,
        percentile: Annotated[float, Range(min=0, max=100)] = 50.0,  # intensity percentile compared, in %
    ) -> None:
        self.percentile = percentile

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        real = float(np.percentile(ctx.train.images, self.percentile))
        fake = float(np.percentile(ctx.synthetic.images, self.percentile))
        share = abs(float(ctx.synthetic.has_gland().mean()) - float(ctx.train.has_gland().mean()))
        return {"my_plugin_intensity_gap": abs(real - fake), "my_plugin_gland_share_gap": share}
