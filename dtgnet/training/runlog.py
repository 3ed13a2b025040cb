"""Run directory, JSON-lines log and TensorBoard events."""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import yaml

from ..config import same_config
from ..errors import DtgError

RESUME_MODES = ("never", "always", "auto")
_HELD: set[str] = set()  # run directories this process holds: POSIX locks never conflict within one process


class RunDirError(DtgError):
    pass


class RunDir:
    """Opens a run directory under an exclusive lock, so two runs can never write it at once.

    The lock is a POSIX record lock (``fcntl.lockf``) on ``.lock``: it belongs to this process alone, is not
    inherited by its children (DataLoader workers) and is released by the kernel the moment the process dies,
    however it dies. ``.lock`` holds the owner's pid and host, named when another run finds it locked.

    ``resume``: ``never`` (the directory must be new or empty; ``force`` clears it once the lock is held),
    ``always`` (a checkpoint must exist) or ``auto`` (resume when a checkpoint exists, start fresh otherwise;
    what a restarted or requeued job wants). ``config``: the run's resolved config; ``auto`` refuses a
    directory whose ``config.yaml`` differs from it. After opening, ``resuming`` says which way it went.
    """

    def __init__(self, path, resume: str = "never", force: bool = False, config: dict | None = None):
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        created = not self.path.exists()
        had_lock_file = (self.path / ".lock").exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create the run directory ({e.strerror or e})") from None
        self._fd = self._lock()
        try:
            self.resuming = self._decide(resume, force, config)
        except BaseException:
            self.close()
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            elif not had_lock_file:  # leave a directory we refused as we found it
                (self.path / ".lock").unlink(missing_ok=True)
            raise
        self.fresh = not self.resuming
        self.ckpt_dir.mkdir(exist_ok=True)

    def _lock(self) -> int:
        lock_path = self.path / ".lock"
        key = str(self.path.resolve())
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if key in _HELD:
                raise BlockingIOError
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            try:
                owner = json.loads(lock_path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                who += " (this process)"
            raise RunDirError(f"{self.path}: a live run holds this directory ({who}); wait for it to end or "
                              f"choose another run.out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        _HELD.add(key)
        self._key = key
        return fd

    def _contents(self) -> list[Path]:
        return [p for p in self.path.iterdir() if p.name != ".lock"]

    def has_checkpoint(self) -> bool:
        return self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("*.pt"))

    def _decide(self, resume: str, force: bool, config: dict | None) -> bool:
        """Whether this run resumes; clears the directory (under the lock) where a fresh start needs it."""
        if resume == "always":
            if not self.has_checkpoint():
                raise RunDirError(f"{self.path}: nothing to resume (no checkpoint in {self.ckpt_dir}); "
                                  f"--resume auto starts a fresh run when there is none")
            return True
        if resume == "auto":
            if self.has_checkpoint():
                return True
            if self._contents():  # a run that died before its first checkpoint, or something else entirely
                self._check_same_config(config)
                self._clear()
            return False
        if self._contents():
            if not force:
                raise RunDirError(f"{self.path}: run directory exists; pass --resume to continue it or "
                                  f"--force to overwrite it")
            self._clear()
        return False

    def _check_same_config(self, config: dict | None) -> None:
        saved = self.path / "config.yaml"
        try:
            previous = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        except (OSError, yaml.YAMLError):
            previous = None
        if previous is None:
            raise RunDirError(f"{self.path}: not empty and not a run directory (no readable config.yaml); "
                              f"refusing to clear it for --resume auto")
        if config is not None and not same_config(previous, config):
            raise RunDirError(f"{self.path}: holds a run with a different config; resume it with its own "
                              f"config.yaml or choose another run.out")

    def _clear(self) -> None:
        for p in self._contents():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the POSIX lock
            self._fd = None
            _HELD.discard(self._key)

    def discard(self) -> None:
        """Remove a directory this run created when it failed before writing a checkpoint, so the same
        command can simply be run again."""
        self.close()
        if self.fresh and not self.has_checkpoint():
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
