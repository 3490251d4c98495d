"""``new-plugin``: write a working one-file plugin to start from."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
KINDS = ("generator", "evaluator")


def new_plugin(name: str, kind: str, folder: str | Path) -> Path:
    """Write ``folder/<name>.py`` from the template of ``kind``; never overwrites a file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"plugin name {name!r} must be a lowercase Python identifier such as my_gan "
                         "(it is both the file name and the registered name)")
    folder = Path(folder)
    path = folder / f"{name}.py"
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another name or folder")
    folder.mkdir(parents=True, exist_ok=True)
    title = name.replace("_", " ").title()
    text = (TEMPLATES / f"{kind}.py.tmpl").read_text().format(
        name=name, cls="".join(part.title() for part in name.split("_")), title=title, folder=folder)
    path.write_text(text)
    return path
