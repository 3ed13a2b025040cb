"""Student files: ``student.safetensors`` (weights plus the metadata that rebuilds the model), run
checkpoints and exported student folders (``config.json`` + ``model.safetensors``), read back into a ready
:class:`~dtgnet.students.base.DTGStudent`."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import Config, build_section
from ..errors import CheckpointError, first_line
from ..io import load_checkpoint, save_safetensors_atomic, write_json_atomic
from .base import DTGStudent, build_student


def save_student_safetensors(model: DTGStudent, path, meta: dict) -> None:
    """Export the student's weights as safetensors (no code runs on load), written atomically."""
    save_safetensors_atomic(model.state_dict(), path, {"dtgnet": json.dumps(meta)})


FOLDER_CONFIG, FOLDER_WEIGHTS = "config.json", "model.safetensors"


def _read_student_file(path) -> tuple[dict, dict]:
    """(metadata, state dict) of a run checkpoint, an exported safetensors student or a student folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / FOLDER_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: not a student folder (no {FOLDER_WEIGHTS}; `dtgnet export "
                                  f"--format folder` writes one)")
        path = path / FOLDER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("dtgnet", "{}"))
            state = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__})") from None
    else:
        ckpt = load_checkpoint(path)  # its checksum too, where it has one
        if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
            raise CheckpointError(f"{path}: not a dtgnet checkpoint")
        meta, state = ckpt["meta"], ckpt["model"]
    if "config" not in meta:
        raise CheckpointError(f"{path}: no dtgnet metadata")
    return meta, state


def checkpoint_config(path):
    """The :class:`~dtgnet.config.Config` a checkpoint was trained with."""
    return build_section(Config, _read_student_file(path)[0]["config"])


def save_student_folder(model: DTGStudent, meta: dict, out, description: dict) -> Path:
    """A self-describing student folder: ``model.safetensors`` (weights and metadata), ``config.json``
    (``description``: what a user of another runtime needs) and a README."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_student_safetensors(model, out / FOLDER_WEIGHTS, meta)
    write_json_atomic(out / FOLDER_CONFIG, description)
    return out


def load_student(path, device: str = "cpu") -> DTGStudent:
    """A trained student from a run checkpoint (``.pt``), an exported ``student.safetensors`` or a student
    folder written by ``dtgnet export --format folder``."""
    return read_student(path, device)[0]


def read_student(path, device: str = "cpu") -> tuple[DTGStudent, dict]:
    """:func:`load_student` and what the file says of itself (``config``, ``mode``, ``teacher_heads``,
    ``num_classes``, ``classes`` when it was written with them ...), from one read of the file."""
    meta, state = _read_student_file(path)
    cfg = build_section(Config, meta["config"])
    model = build_student(cfg, meta.get("teacher_heads", {}), meta.get("num_classes", 0),
                          self_head=meta.get("self_head", True), token_dims=meta.get("token_heads"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model ({first_line(e)})") from None
    return model.to(device).eval(), meta
