"""Large output files (prepared frames, teacher caches) written so that a full disk is a clear error.

The space is reserved before the first byte is written (``posix_fallocate``), the data goes in with
ordinary writes (never through a writable memory map, where a full disk is a SIGBUS that kills the
process without a word), and the file keeps a temporary name until it is complete: an interrupted or failed
write never leaves a file that a later run would take as finished.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import DtgError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(DtgError):
    """Not enough space (or quota) for an output file; the message names the file and the bytes needed."""


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _human(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def no_space_error(path: Path, nbytes: int, err: OSError) -> DiskFullError:
    free = _free_bytes(path.parent)
    where = f"; {_human(free)} free there" if free is not None else ""
    return DiskFullError(f"{path}: {err.strerror or err}: writing it needs {_human(nbytes)} ({nbytes} bytes){where}")


def _allocate(fd: int, nbytes: int) -> None:
    try:
        if nbytes > 0:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve still
            raise                                           # reports a full disk on write


@contextmanager
def reserved_file(path, nbytes: int):
    """Yield a binary file handle on ``path.tmp`` with ``nbytes`` reserved on disk; on success the file is
    fsync'd and renamed to ``path``, on any failure it is removed. No space: :class:`DiskFullError`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fh = open(tmp, "wb")
    try:
        _allocate(fh.fileno(), nbytes)
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except OSError as e:
        fh.close()
        tmp.unlink(missing_ok=True)
        if e.errno in _NO_SPACE:
            raise no_space_error(path, nbytes, e) from None
        raise
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise


class RowFile:
    """A fixed-size output written piecewise at known offsets by one or several processes (``pwrite``),
    e.g. a ``.npy`` whose rows belong to many videos. ``create`` reserves the whole size up front (a full
    disk fails there); ``open`` attaches to one that exists (another rank's, or an interrupted run's)."""

    def __init__(self, path, nbytes: int, create: bool):
        self.path, self.nbytes = Path(path), nbytes
        try:
            self.fd = os.open(self.path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o644)
        except OSError as e:
            raise DtgError(f"{self.path}: cannot open for writing ({e.strerror or e})") from None
        try:
            if create:
                _allocate(self.fd, nbytes)
        except OSError as e:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            if e.errno in _NO_SPACE:
                raise no_space_error(self.path, nbytes, e) from None
            raise

    def write(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        try:
            while len(view):
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise no_space_error(self.path, self.nbytes, e) from None
            raise

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_text_atomic(path, text: str) -> None:
    """A small file written whole or not at all (temporary name, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
