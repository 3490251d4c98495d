"""Where a run reports: console (through tqdm), log.txt, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOGGERS = ("toolkit", "plugins", "ganseg_user_plugins")


class _RunLogHandler(logging.Handler):
    def __init__(self, runlog: RunLog) -> None:
        super().__init__(logging.INFO)
        self.runlog = runlog

    def emit(self, record: logging.LogRecord) -> None:
        self.runlog.info(record.getMessage())


class RunLog:
    """Writes human lines to the console and ``log.txt``, numbers to ``metrics.jsonl``.

    Args:
        run_dir: the run directory.
        writer: a TensorBoard SummaryWriter, or None.
        quiet: no console output (tests).
    """

    def __init__(self, run_dir: Path, writer=None, quiet: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self.quiet = quiet
        self._log = open(self.run_dir / "log.txt", "a", buffering=1)
        # Messages that toolkit and plugin modules send through `logging` land here too.
        self._handler = _RunLogHandler(self)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._handler)
            logger.setLevel(logging.INFO)

    def info(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"{stamp} {message}\n")
        if not self.quiet:
            tqdm.write(message)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        """One JSON line and one TensorBoard scalar per value."""
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": _plain(v) for k, v in values.items()})
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}{key}", value, step)

    def truncate_after(self, step: int) -> None:
        """Drop metric lines later than ``step`` (a resumed run rewrites them)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept, dropped = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # a line cut short by a kill mid-write: only a log line, so drop it
                record, dropped = None, dropped + 1
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        if dropped:
            self.info(f"resume: dropped {dropped} damaged line(s) of {path} (cut short by an interrupted write)")
        path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        self._log.close()
        if self.writer is not None:
            self.writer.flush()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
