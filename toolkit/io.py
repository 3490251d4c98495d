"""Atomic file writes: every file the toolkit writes is either the old one or the complete new one.

A temp file in the same folder, flushed and fsynced, then renamed over the
target (and the folder fsynced), so a crash, a kill or a full disk at any
moment never leaves a truncated checkpoint, results file or cache entry.
Errors carry the path and the cause in one line (``WriteError``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """A file could not be written; the message names it and says why (no space, read-only, ...)."""


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``content`` (bytes, text, or a function writing to a binary file) to ``path`` atomically.

    Raises:
        WriteError: the folder cannot be created or written, or the disk is full; the
            previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}; the previous file (if any) is "
                             "unchanged") from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems cannot fsync a folder; the rename already happened
        pass
    return path
