"""Every way a write can fail becomes one WriteError naming the file, and the previous file stays loadable.

First on a real full file system (a 1 MiB tmpfs in a private mount namespace, where the machine allows it:
root and ``unshare``), then with the very error torch's zip writer raises there, made by torch itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from toolkit.io import WriteError, atomic_write
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--set", "run.evaluators=[toy_stats]", "--set", "data.phantom_patients=8"]

FULL_DISK = textwrap.dedent("""
    import os, sys
    import numpy as np, torch
    from toolkit.data.slices import SliceSet
    from toolkit.io import WriteError, atomic_write
    from toolkit.train.checkpoint import load_checkpoint, save_checkpoint

    folder = sys.argv[1]
    ckpt = os.path.join(folder, "checkpoints", "last.pt")
    save_checkpoint({"step": 1, "w": torch.ones(8)}, ckpt)
    attempts = {
        "torch.save": lambda: save_checkpoint({"step": 2, "w": torch.zeros(1_000_000)}, ckpt),
        "bytes": lambda: atomic_write(ckpt, b"x" * 2_000_000),
        "np.savez": lambda: atomic_write(ckpt, SliceSet(np.zeros((300, 32, 32), np.float32) + np.random.rand(
            300, 32, 32).astype(np.float32), np.zeros((300, 32, 32), np.uint8), np.zeros((300, 2), np.float32),
            np.full(300, "p"), np.arange(300)).save),
    }
    for kind, attempt in attempts.items():
        try:
            attempt()
        except WriteError as exc:
            print(kind, "WriteError", exc)
        except BaseException as exc:
            print(kind, "OTHER", type(exc).__name__, str(exc).splitlines()[0])
        else:
            print(kind, "NO ERROR")
        print(kind, "kept step", load_checkpoint(ckpt)["step"], "files", sorted(os.listdir(os.path.dirname(ckpt))))
""")


def tiny_filesystem_available() -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mkdir -p /tmp/.ganseg-probe && mount -t tmpfs -o "
                            "size=1m tmpfs /tmp/.ganseg-probe && echo mounted"], capture_output=True, text=True)
    return "mounted" in probe.stdout


@pytest.mark.skipif(not tiny_filesystem_available(), reason="needs root and unshare -m to mount a small tmpfs")
def test_a_real_full_disk_is_a_write_error_and_the_previous_checkpoint_loads(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    # The tmpfs lives in a private mount namespace: it vanishes with the process, whatever happens.
    done = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{folder}" && '
                           f'"{sys.executable}" "{script}" "{folder}"'],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for kind in ("torch.save", "bytes", "np.savez"):
        failed = next(line for line in lines if line.startswith(f"{kind} ") and "kept" not in line)
        assert f"{kind} WriteError cannot write {folder}/checkpoints/last.pt: No space left on device; the " \
               "previous file (if any) is unchanged" == failed, done.stdout
        assert f"{kind} kept step 1 files ['last.pt']" in lines, done.stdout


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC); torch.save writes into it."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_torchs_own_runtime_error_from_the_writer_is_a_write_error(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def save_to_a_full_disk(f):
        torch.save({"step": 2, "w": torch.zeros(100_000)}, FullDisk(f, room=2000))

    # What torch really raises there (not an OSError): the premise of this whole test.
    with pytest.raises(RuntimeError, match=r"inline_container.cc.*unexpected pos"):
        with open(tmp_path / "raw.pt", "wb") as f:
            save_to_a_full_disk(f)
    with pytest.raises(WriteError, match=r"^cannot write .*last.pt: No space left on device; the previous file"):
        atomic_write(path, save_to_a_full_disk)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(path.parent) == ["last.pt"], "temporary files must not be left behind"


def test_torchs_runtime_error_without_an_oserror_behind_it_is_a_write_error_too(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def writer(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(WriteError, match=r"cannot write .*last.pt: the file could not be written completely "
                                         r"\(torch: .*unexpected pos 704 vs 598\); is the disk full\?"):
        atomic_write(path, writer)
    assert load_checkpoint(path)["step"] == 1


def test_a_partial_write_is_a_write_error(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, '{"old": 1}')

    def short(f):
        f.write(b'{"new": 2, "padding": "' + b"x" * 100 + b'"}')
        f.flush()
        os.ftruncate(f.fileno(), 10)  # the bytes were written, the file holds fewer: what a short write leaves

    with pytest.raises(WriteError, match=r"results.json: only 10 of 125 bytes reached the disk \(a partial write\)"):
        atomic_write(path, short)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["results.json"]


def test_a_bug_in_the_writer_keeps_its_own_error(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(path, b"old")

    def buggy(f):
        raise TypeError("not a write failure")

    with pytest.raises(TypeError, match="not a write failure"):
        atomic_write(path, buggy)
    with pytest.raises(RuntimeError, match="some other runtime error"):
        atomic_write(path, lambda f: (_ for _ in ()).throw(RuntimeError("some other runtime error")))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


@pytest.fixture
def cli(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path_factory.mktemp("phantom-cache")))
    return lambda *args: CliRunner().invoke(main, [*args], catch_exceptions=False)


def test_a_full_disk_during_a_run_checkpoint_is_one_line_and_the_last_good_checkpoint_stays(
        cli, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint (step 4 of the smoke profile) hits a full disk
            return real_save(obj, FullDisk(f, room=500), *args, **kwargs)  # torch raises its RuntimeError
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = cli("run", "-g", "toy", "-p", "smoke", "--out", str(tmp_path), "--name", "r1", "-q", *TOY)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.output.startswith("Error: cannot write "), result.output
    assert "last.pt: No space left on device; the previous file (if any) is unchanged" in result.output
    assert "Traceback" not in result.output and "inline_container" not in result.output
    assert load_checkpoint(tmp_path / "r1" / "checkpoints" / "last.pt")["step"] == 2
    assert [p.name for p in (tmp_path / "r1" / "checkpoints").iterdir()] == ["last.pt"]


def test_a_full_disk_while_evaluate_writes_results_is_one_line(cli, tmp_path, monkeypatch):
    assert cli("run", "-g", "toy", "-p", "smoke", "--out", str(tmp_path), "--name", "r1", "-q", *TOY).exit_code == 0
    results = tmp_path / "r1" / "results.json"
    before = results.read_bytes()
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = cli("evaluate", "--run", str(tmp_path / "r1"), "-q")
    monkeypatch.undo()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"Error: cannot write {results}: No space left on device" in result.output
    assert results.read_bytes() == before
