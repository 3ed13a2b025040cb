"""Large files (prepared frames, teacher caches): written so that a full disk is a clear error, read with
bounded memory.

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

import numpy as np

from .errors import DataError, DtgError

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


class NpyRows:
    """Rows of an ``(N, ...)`` ``.npy`` read with ``pread``. Not a memory map: the kernel maps the pages around
    every faulting one into the process, so a reader's resident memory grew with the data it had touched (a
    kNN pass over 800 prepared videos: +840 MiB); explicit reads keep it flat. The file is opened on first
    read, so each DataLoader worker (fork or spawn) opens its own."""

    def __init__(self, path, redo: str):
        self.path, self.redo = Path(path), redo  # redo: what rewrites the file, for the truncation error
        try:
            with open(self.path, "rb") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                shape, _, self.dtype = (fmt.read_array_header_1_0 if version == (1, 0) else
                                        fmt.read_array_header_2_0)(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: not a readable .npy ({e}); {redo}") from None
        self.num_rows, self.row_shape = shape[0], shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.fd = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "fd": -1}

    def _pread(self, first: int, count: int) -> bytes:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self.fd, count * self.row_bytes, self.offset + first * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise DataError(f"{self.path}: truncated (row {first + count - 1} is past its end); {self.redo}")
        return data

    def span(self, first: int, count: int) -> np.ndarray:
        """Rows ``first .. first + count - 1`` in one read."""
        return np.frombuffer(self._pread(first, count), self.dtype).reshape(count, *self.row_shape)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows by number, one read each (rows of a prepared clip lie far apart at a large stride)."""
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for i, r in enumerate(rows):
            out[i] = np.frombuffer(self._pread(int(r), 1), self.dtype).reshape(self.row_shape)
        return out

    def __del__(self):
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)


def write_text_atomic(path, text: str) -> None:
    """A small file written whole or not at all (temporary name, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
