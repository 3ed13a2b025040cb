"""Typed errors. A user mistake becomes one of these and the CLI prints one line, exit status 2."""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """A library exception in one line for a one-line error: its first line, or its type when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class DtgError(Exception):
    """Base class for errors caused by input (config, files, data), not by a bug."""


class ConfigError(DtgError):
    """A config key is unknown, mistyped or out of range; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class DataError(DtgError):
    """A list file, data root or dataset entry is unusable; the message names the file."""


class VideoDecodeError(DataError):
    """A video could not be opened or decoded."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TooManyBadItems(DataError):
    """More than the configured fraction of items failed to load during a run."""


class CheckpointError(DtgError):
    """A checkpoint or weights file is missing, unsafe or does not match the model."""


EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL, "try again later": the checkpoint is current, requeue the job


class Preempted(Exception):
    """SIGTERM / SIGUSR1 stopped a run after its current step; its ``last.pt`` holds that step. Not a
    :class:`DtgError`: nothing is wrong, and the CLI exits with ``EXIT_PREEMPTED``, not 2. ``stopped`` says
    where it stopped, ``hint`` how to continue (a command that ran the training, such as the study, names its
    own)."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, stopped: str, hint: str = "continue with --resume (or --resume auto)"):
        super().__init__(f"{stopped}; {hint}")
        self.stopped = stopped


def raised_in_worker(e: DtgError) -> DtgError:
    """A DtgError raised in a DataLoader worker reaches the main process as "Caught X in DataLoader worker
    process N." followed by the worker's traceback; this is the same error with the message it was raised
    with, so the user reads the one line they would read without workers."""
    text = str(e)
    if not text.startswith("Caught "):
        return e
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            return type(e)(line[len(prefix):])
    return e
