"""Files in and out, one routine of each kind: atomic writes, checksummed torch files, the safe loader, and
large files (prepared frames, teacher caches) written so that a full disk is a clear error and read with
bounded memory. Also the constants more than one layer shares.

The space is reserved before the first byte is written (``posix_fallocate``), the data goes in with
ordinary writes (never through a writable memory map, where a full disk is a SIGBUS that kills the
process without a word), and the file keeps a temporary name until it is complete: an interrupted or failed
write never leaves a file that a later run would take as finished.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ConfigError, DataError, DtgError, first_line

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

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
def atomic_target(path):
    """Yield ``path.tmp`` to be written; on success it is renamed to ``path`` (the one atomic step), on any
    failure removed. Whoever writes it fsyncs what matters."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def reserved_file(path, nbytes: int):
    """Yield a binary file handle on ``path.tmp`` with ``nbytes`` reserved on disk; on success the file is
    fsync'd and renamed to ``path``, on any failure it is removed. No space: :class:`DiskFullError`."""
    path = Path(path)
    try:
        with atomic_target(path) as tmp, open(tmp, "wb") as fh:
            _allocate(fh.fileno(), nbytes)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise no_space_error(path, nbytes, e) from None
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


def write_bytes_atomic(path, data: bytes) -> None:
    """A small file written whole or not at all (temporary name, fsync, rename)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path, obj, indent: int | None = 2) -> None:
    """``obj`` as JSON, written atomically; the parent directory is made when missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=indent))


def save_safetensors_atomic(state: dict, path, metadata: dict[str, str]) -> None:
    """Tensors as safetensors (no code runs on load), written atomically."""
    from safetensors.torch import save_file

    with atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)


def safe_torch_load(path) -> dict:
    """``torch.load(weights_only=True)``: a file that would run code when unpickled is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: refused or unreadable by the safe loader (weights_only=True): {first_line(e)}") from None


def read_state_dict(path: Path, key: str) -> dict:
    """A state dict from safetensors or a weights-only torch file; unwraps ``state_dict`` / ``model``."""
    if not path.is_file():
        raise ConfigError(key, f"file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a safetensors file ({first_line(e)})") from None
    state = safe_torch_load(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def require_extra(package: str, extra: str, key: str = "teachers.source"):
    """Import an optional dependency, or say which extra installs it (a ConfigError on ``key``)."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(key, f"this needs {package} (pip install 'dtgnet[{extra}]')") from None


# ------------------------------------------------------------------------------- checksummed torch files

class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it (a checksum without a second read) and
    keeps the first OS error: torch.save reports a full disk as an unrelated RuntimeError."""

    def __init__(self, fh):
        self.fh, self.sha, self.bytes, self.error = fh, hashlib.sha256(), 0, None

    def write(self, data) -> int:
        try:
            written = self.fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(data)
        self.bytes += len(data)
        return written

    def flush(self) -> None:
        self.fh.flush()


def checksum_path(path: Path) -> Path:
    """``X.pt`` -> ``X.pt.sha256``, one line in ``sha256sum`` format (``sha256sum -c`` checks it too)."""
    return path.with_name(path.name + ".sha256")


def payload_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint: what writing it will need on disk, near enough."""
    import torch

    if torch.is_tensor(obj):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def atomic_save(obj, path: str | os.PathLike) -> None:
    """Reserve the space, write ``path.tmp``, fsync, rename, then write the SHA-256 beside it: a full disk
    fails before anything is written (:class:`DiskFullError`), a crash leaves the previous file intact, and
    a file damaged later fails its checksum instead of loading."""
    import torch

    path = Path(path)
    with reserved_file(path, payload_bytes(obj)) as fh:
        writer = _HashingWriter(fh)
        try:
            torch.save(obj, writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise
        fh.truncate(writer.bytes)  # give back what was reserved beyond the end
    write_text_atomic(checksum_path(path), f"{writer.sha.hexdigest()}  {path.name}\n")


def verify_checksum(path: Path) -> None:
    """Raise :class:`CheckpointError` if ``path`` does not match its ``.sha256`` (files without one pass)."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    want = (sidecar.read_text().split() or [""])[0]
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    if sha.hexdigest() != want:
        raise CheckpointError(f"{path}: checksum mismatch (the file was damaged or cut short after it was written)")


def load_checkpoint(path) -> dict:
    """Load a checkpoint safely (``weights_only``), verifying its checksum when it has one."""
    path = Path(path)
    if path.is_file():
        verify_checksum(path)
    return safe_torch_load(path)
