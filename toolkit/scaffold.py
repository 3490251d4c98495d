"""``new-plugin``: write a working one-file plugin to start from.

Generator templates (``--template``), each under 100 lines and passing the
registry-wide contract test as written:

    gan: a minimal conditional GAN of (image, mask) pairs (G + D, non-saturating loss).
    pairs: a tiny conditional VAE of (image, mask) pairs (a joint model, sampled from the prior).
    mask2image: a pix2pix-style mask-to-image GAN that paints masks from the core's mask source.

Evaluators have one template (``--kind evaluator``).

The templates in ``toolkit/templates/`` are plain Python files (ruff lints them, ``ast`` parses them)
written for a plugin called :data:`NAME_TOKEN` with the class :data:`CLASS_TOKEN`; ``new_plugin``
puts the chosen name in both places with ``str.replace`` and changes nothing else.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
#: The plugin name every template is written for (registered name, metric-name prefix, messages) ...
NAME_TOKEN = "my_plugin"
#: ... and its class name: both replaced by the new plugin's.
CLASS_TOKEN = "MyPlugin"
KINDS = ("generator", "evaluator")
#: Generator templates: name -> what it is (shown by ``new-plugin --help``).
GENERATOR_TEMPLATES = {
    "gan": "minimal conditional GAN of (image, mask) pairs, non-saturating loss",
    "pairs": "tiny conditional VAE of (image, mask) pairs",
    "mask2image": "pix2pix-style mask-to-image GAN using the core's mask source",
}
DEFAULT_TEMPLATE = "gan"


def new_plugin(name: str, kind: str, folder: str | Path, template: str | None = None) -> Path:
    """Write ``folder/<name>.py`` from the template of ``kind`` (generators: ``template``); never overwrites a file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "evaluator" and template is not None:
        raise ValueError("--template chooses a generator template; evaluators have one (drop --template)")
    template = template or DEFAULT_TEMPLATE
    if kind == "generator" and template not in GENERATOR_TEMPLATES:
        raise ValueError(f"unknown generator template {template!r}; valid: {', '.join(GENERATOR_TEMPLATES)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"plugin name {name!r} must be a lowercase Python identifier such as my_gan "
                         "(it is both the file name and the registered name)")
    folder = Path(folder)
    path = folder / f"{name}.py"
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name or folder")
    folder.mkdir(parents=True, exist_ok=True)
    cls = "".join(part.title() for part in name.split("_"))
    # The class first: cls has no underscore, so it never holds NAME_TOKEN for the second replace to hit.
    text = template_path(kind, template).read_text().replace(CLASS_TOKEN, cls).replace(NAME_TOKEN, name)
    path.write_text(text)
    return path


def template_path(kind: str, template: str | None = None) -> Path:
    """The template file of ``kind`` (generators: ``template``, default :data:`DEFAULT_TEMPLATE`)."""
    return TEMPLATES / (f"{template or DEFAULT_TEMPLATE}.py" if kind == "generator" else "evaluator.py")
