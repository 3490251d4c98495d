"""Built-in evaluators. The registry imports each module listed here on first use."""

MODULES: tuple[str, ...] = ("dice_gain", "fd", "prdc", "diversity", "memorization", "mask_shape")
