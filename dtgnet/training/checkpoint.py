"""Training checkpoints: rotation (step files, last, best), resume from the newest readable one, RNG state.
The file format (checksummed, atomic, loaded safely) is :mod:`dtgnet.io`'s."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_save, atomic_target, checksum_path, load_checkpoint, write_text_atomic


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
    try:
        with atomic_target(alias) as tmp:
            os.link(path, tmp)
    except OSError:
        atomic_save(obj, alias)
        return
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
