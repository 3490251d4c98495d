"""Atomic file writes and checked reads: every file the toolkit writes is either the old one or the complete
new one, and a file read back that is damaged is one clean error naming it.

A temp file in the same folder, flushed and fsynced, then renamed over the
target (and the folder fsynced), so a crash, a kill or a full disk at any
moment never leaves a truncated checkpoint, results file or cache entry.
Errors carry the path and the cause in one line (``WriteError``). Reading back
(:func:`read_checked`) turns a truncated or damaged file (a half copy, a zip
cut short, JSON that does not parse) into one error that names the file and
says what to do, instead of a ``zipfile.BadZipFile`` or ``JSONDecodeError``
traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: What parsing a damaged file raises: a zip cut short (.npz, .pt), bad JSON, missing keys, short reads.
DAMAGED = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


class WriteError(OSError):
    """A file could not be written; the message names it and says why (no space, read-only, ...)."""


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``content`` (bytes, text, or a function writing to a binary file) to ``path`` atomically.

    Raises:
        WriteError: the folder cannot be created or written, the disk is full (an ``OSError``, or
            the ``RuntimeError`` torch's zip writer raises in its place), or fewer bytes reached the
            file than were written; the previous file at ``path``, if any, is untouched.
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
            _check_size(f, content)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = _write_failure(exc)
        if reason is not None:
            raise WriteError(f"cannot write {path}: {reason}; the previous file (if any) is unchanged") from None
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


class _ShortWrite(Exception):
    """Fewer bytes are in the file than were written to it."""


def _check_size(f: IO[bytes], content: bytes | str | Callable[[IO[bytes]], None]) -> None:
    """A write that reported success but left fewer bytes on disk (a short write, a truncation) is a failure."""
    size = os.fstat(f.fileno()).st_size
    expected = f.tell() if callable(content) else len(content.encode() if isinstance(content, str) else content)
    if size < expected:
        raise _ShortWrite(f"only {size} of {expected} bytes reached the disk (a partial write)")


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, in a few words, or None for an error that is not a failed write (a bug, Ctrl-C).

    torch's zip writer (``torch.save``) reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc:...] . unexpected pos ...``, with the real ``OSError`` only as its context.
    """
    if isinstance(exc, _ShortWrite):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    if not isinstance(exc, RuntimeError):  # a bug in the writer, Ctrl-C: not ours to rename
        return None
    chain, seen = exc.__cause__ or exc.__context__, set()
    while chain is not None and id(chain) not in seen:  # the OSError behind it, if any: its words are the clearest
        seen.add(id(chain))
        if isinstance(chain, OSError):
            return chain.strerror or str(chain) or type(chain).__name__
        chain = chain.__cause__ or chain.__context__
    if any(s in str(exc) for s in TORCH_WRITE_FAILURES):
        first = str(exc).strip().splitlines()[0]
        return f"the file could not be written completely (torch: {first}); is the disk full?"
    return None


#: Words of the RuntimeError torch's zip writer raises when the file under it failed.
TORCH_WRITE_FAILURES = ("inline_container.cc", "PytorchStreamWriter", "file write failed", "unexpected pos")


def read_checked(path: str | Path, parse: Callable[[Path], T], fix: str,
                 error: type[Exception] = ValueError) -> T:
    """``parse(path)``, with any sign of a damaged, truncated or unreadable file raised as ``error``.

    The message names the file, the cause in a few words and ``fix`` (what the
    user can do: rerun the stage, ``--force``, restore the file).
    """
    path = Path(path)
    try:
        return parse(path)
    except DAMAGED as exc:
        if isinstance(exc, OSError) and exc.strerror:  # permission denied, a folder, an I/O error
            raise error(f"cannot read {path}: {exc.strerror}. {fix}") from None
        raise error(f"{path} is damaged or truncated ({_cause(exc)}). {fix}") from None


def read_json(path: str | Path, fix: str, error: type[Exception] = ValueError,
              check: Callable[[Any], Any] | None = None) -> Any:
    """A JSON file through :func:`read_checked`; ``check(value)`` may pick a part of it (KeyError: damaged)."""
    def parse(p: Path) -> Any:
        value = json.loads(p.read_text())
        return value if check is None else check(value)

    return read_checked(path, parse, fix, error)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, KeyError):
        key = exc.args[0] if exc.args else "?"
        return str(key) if " " in str(key) else f"key {key!r} is missing"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
