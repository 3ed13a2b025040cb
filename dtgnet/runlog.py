"""Run directory, JSON-lines log and TensorBoard events."""
from __future__ import annotations

import fcntl
import json
import math
import shutil
import time
from pathlib import Path

from .errors import DtgError


class RunDirError(DtgError):
    pass


class RunDir:
    """Creates (or reopens with ``resume``) a run directory and holds an exclusive lock on it, so two runs
    cannot write the same directory at once."""

    def __init__(self, path, resume: bool = False, force: bool = False):
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            if not force:
                raise RunDirError(f"{self.path}: run directory exists; pass --resume to continue it or "
                                  f"--force to overwrite it")
            shutil.rmtree(self.path)
        if resume and not (self.path / "checkpoints" / "last.pt").is_file():
            raise RunDirError(f"{self.path}: nothing to resume (no checkpoints/last.pt)")
        self.fresh = not resume
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.path / "checkpoints"
        self.ckpt_dir.mkdir(exist_ok=True)
        self._lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunDirError(f"{self.path}: another run is writing this directory") from None

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def discard(self) -> None:
        """Remove a directory this run created when it failed before writing a checkpoint, so the same
        command can simply be run again."""
        self.close()
        if self.fresh and not any(self.ckpt_dir.glob("*.pt")):
            shutil.rmtree(self.path, ignore_errors=True)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Logger:
    """Appends records to ``log.jsonl`` and writes scalars to TensorBoard (``tb/``)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.fh = open(run_dir / "log.jsonl", "a") if enabled else None
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict, step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **{k: _clean(v) for k, v in record.items()}}
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time", "epoch"):
                    self.tb.add_scalar(k, v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.tb.add_scalar(f"{k}/{kk}", vv, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            self.tb.close()


def read_log(path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
