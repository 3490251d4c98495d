"""An example ganseg plugin package: one generator, ``example_vae``, found through the ``ganseg.generators``
entry point (see ``pyproject.toml``). Importing this package registers nothing; ganseg imports
``ganseg_example_plugin.example_vae`` itself when it discovers plugins."""
