"""Checkpoints: atomic writes (temporary file, fsync, rename), safe loading, RNG state capture."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .storage import reserved_file, write_text_atomic
from .teachers import safe_torch_load


def config_hash(cfg_dict: dict) -> str:
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    if torch.is_tensor(obj):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def atomic_save(obj, path: str | os.PathLike) -> None:
    """Reserve the space, write ``path.tmp``, fsync, rename, then write the SHA-256 beside it: a full disk
    fails before anything is written (:class:`~dtgnet.storage.DiskFullError`), a crash leaves the previous
    file intact, and a file damaged later fails its checksum instead of loading."""
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


def state_tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a training checkpoint's state (model, optimizer, teacher weighting, queues) by a
    flat name: what two runs must agree on to be the same run."""
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        out.update({f"optim.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    out.update({f"weighting.{k}": v for k, v in ckpt["weighting"].items()})
    out.update({f"queue.{i}": q for i, q in enumerate(ckpt["queues"])})
    return out


def load_newest_readable(ckpt_dir: Path) -> tuple[dict, Path, list[str]]:
    """The newest checkpoint of a run that loads and passes its checksum: ``last.pt``, else the step files
    newest first. Returns (checkpoint, its path, one line per file passed over and why)."""
    candidates = [ckpt_dir / "last.pt"] + sorted(ckpt_dir.glob("step_*.pt"), reverse=True)
    skipped = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return load_checkpoint(path), path, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(f"{ckpt_dir}: no readable checkpoint to resume from"
                          + (f" ({'; '.join(skipped)})" if skipped else ""))


def _alias(path: Path, alias: Path, obj) -> None:
    """Point ``alias`` at ``path`` atomically (a hard link: no second copy on disk; a copy where links fail),
    with its own checksum line."""
    tmp = alias.with_name(alias.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        atomic_save(obj, alias)
        return
    os.replace(tmp, alias)
    digest = checksum_path(path).read_text().split()[0]
    write_text_atomic(checksum_path(alias), f"{digest}  {alias.name}\n")


def save_rotating(obj, ckpt_dir: Path, step: int, keep: int, best: bool = False) -> Path:
    """``step_<N>.pt``, ``last.pt`` and, when ``best``, ``best.pt``, each with its ``.sha256``; only the newest
    ``keep`` step files stay."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    atomic_save(obj, path)
    _alias(path, ckpt_dir / "last.pt", obj)
    if best:
        _alias(path, ckpt_dir / "best.pt", obj)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return path
