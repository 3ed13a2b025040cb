"""Checkpoints: atomic writes (temporary file, fsync, rename), safe loading, RNG state capture."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

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


def atomic_save(obj, path: str | os.PathLike) -> None:
    """Write to ``path.tmp``, fsync, rename: a crash or a full disk leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path) -> dict:
    return safe_torch_load(path)


def _alias(path: Path, alias: Path, obj) -> None:
    """Point ``alias`` at ``path`` atomically (a hard link: no second copy on disk; a copy where links fail)."""
    tmp = alias.with_name(alias.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        atomic_save(obj, alias)
    else:
        os.replace(tmp, alias)


def save_rotating(obj, ckpt_dir: Path, step: int, keep: int, best: bool = False) -> Path:
    """``step_<N>.pt``, ``last.pt`` and, when ``best``, ``best.pt``; only the newest ``keep`` step files stay."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    atomic_save(obj, path)
    _alias(path, ckpt_dir / "last.pt", obj)
    if best:
        _alias(path, ckpt_dir / "best.pt", obj)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path
