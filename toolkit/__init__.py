"""ganseg core: registry, config, data, training loop, segmentation and experiments.

The core never imports a concrete plugin by name; plugins reach it through
:mod:`toolkit.registry`.
"""

__version__ = "0.1.0"
