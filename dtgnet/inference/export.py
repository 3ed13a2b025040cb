"""``dtgnet export``: a student for another runtime.

* ``onnx``: torch's dynamo-based ONNX exporter (the TorchScript-based one is deprecated), a dynamic batch
  axis and, where the architecture runs at other clip lengths, a dynamic frame axis; checked after writing
  with onnxruntime against PyTorch.
* ``pt2``: ``torch.export`` (an ExportedProgram, ``torch.export.load``; AOTInductor compiles it for C++).
  Chosen over TorchScript, whose ``torch.jit.trace`` is deprecated and which freezes every shape it saw;
  an ExportedProgram keeps the same dynamic axes as the ONNX file. Checked after writing like ONNX.
* ``folder``: ``model.safetensors`` + ``config.json`` (architecture, clip shape, normalisation, class names,
  teachers and their embedding widths) + README, loadable by :func:`dtgnet.load_student`, ``predict`` and
  ``embed``.

Exported graphs take float clips ``(B, T, 3, S, S)``, RGB in [0, 1] (the network normalises), and return
``features`` ``(B, D)``, ``logits`` ``(B, K)`` for a fine-tuned student, and ``head.<teacher>`` per teacher.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, build_section
from ..errors import DtgError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD, require_extra
from ..students import read_student, save_student_folder

FORMATS = ("onnx", "pt2", "folder")


class ExportedStudent(nn.Module):
    """The student as one graph: clips -> (features, [logits], head outputs...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.heads = list(model.teacher_heads)

    def output_names(self) -> list[str]:
        return ["features"] + (["logits"] if self.model.classifier is not None else []) + \
            [f"head.{h}" for h in self.heads]

    def forward(self, clips):
        f = self.model.features(clips)  # (B, D)
        out = [f]
        if self.model.classifier is not None:
            out.append(self.model.classifier(f))  # (B, K)
        return tuple(out + [self.model.teacher_heads[h](f) for h in self.heads])


def _example(batch: int, frames: int, size: int) -> torch.Tensor:
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(batch * 1000 + frames))


def _runs_at(module: nn.Module, frames: int, size: int) -> bool:
    """Whether the architecture takes clips of ``frames`` frames (TSN and the ViT fix theirs)."""
    try:
        with torch.no_grad():
            module(_example(1, frames, size))
        return True
    except (ValueError, RuntimeError):
        return False


def _dynamic_shapes(frames_dynamic: bool) -> dict:
    axes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if frames_dynamic:
        axes[1] = torch.export.Dim.AUTO  # the range the network's code allows
    return {"clips": axes}


def _max_diff(ours: list[np.ndarray], reference: tuple[torch.Tensor, ...]) -> float:
    return max(float(np.abs(np.asarray(a) - r.detach().numpy()).max()) for a, r in zip(ours, reference))


def _check(run, module: nn.Module, shapes: list[tuple[int, int]], size: int) -> float:
    """Largest absolute difference between ``run(clips) -> arrays`` and PyTorch over clips of ``shapes``."""
    worst = 0.0
    for batch, frames in shapes:
        x = _example(batch, frames, size)
        with torch.no_grad():
            worst = max(worst, _max_diff(run(x), module(x)))
    return worst


def _export_onnx(module: ExportedStudent, out: Path, frames: int, size: int, dynamic_frames: bool, opset: int):
    require_extra("onnxscript", "onnx")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its steps
        torch.onnx.export(module, (_example(2, frames, size),), str(out), input_names=["clips"],
                          output_names=module.output_names(), dynamic_shapes=_dynamic_shapes(dynamic_frames),
                          opset_version=opset, dynamo=True, external_data=False)
    ort = require_extra("onnxruntime", "onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"clips": x.numpy()})


def _export_pt2(module: ExportedStudent, out: Path, frames: int, size: int, dynamic_frames: bool, opset: int):
    program = torch.export.export(module, (_example(2, frames, size),), dynamic_shapes=_dynamic_shapes(dynamic_frames))
    torch.export.save(program, str(out))
    loaded = torch.export.load(str(out)).module()
    return lambda x: [t.detach().numpy() for t in loaded(x)]


def describe(meta: dict, model: nn.Module) -> dict:
    """What a user of another runtime needs to feed the student and read its outputs."""
    cfg = build_section(Config, meta["config"])
    heads = meta.get("teacher_heads", {})
    return {"format": "dtgnet-student", "version": 1, "arch": cfg.student.arch, "temporal": model.temporal,
            "frames": cfg.data.frames, "size": cfg.data.size, "frame_stride": cfg.data.stride,
            "input": "float32 clips (batch, frames, 3, size, size), RGB in [0, 1]; the network normalises them",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "feature_dim": model.backbone.feature_dim,
            "mode": meta.get("mode", ""), "num_classes": int(meta.get("num_classes", 0)),
            "classes": list(meta.get("classes") or []) if meta.get("num_classes") else [],
            "teachers": [{"name": t.name, "source": t.source, "model": t.model, "weights": t.weights,
                          "embedding": t.embedding, "dim": heads[t.name]} for t in cfg.teachers if t.name in heads]}


README = """# {arch} student exported by dtgnet

- `model.safetensors`: the weights, with the metadata that rebuilds the network.
- `config.json`: architecture, clip shape ({frames} frames of {size}x{size}, `temporal`: {temporal}),
  input range and normalisation, class names ({num_classes}), teachers and their embedding widths.

Load it with `dtgnet.load_student("{name}")`, or run `dtgnet predict {name} VIDEO...` /
`dtgnet embed {name} VIDEO... --out DIR`.
"""


def export_student(checkpoint, fmt: str, out, opset: int = 18, tolerance: float = 1e-4) -> dict:
    """Write ``checkpoint``'s student as ``fmt`` to ``out``. For onnx and pt2 the written file is run on random
    clips and compared with PyTorch; above ``tolerance`` the file is removed and the export fails."""
    if fmt not in FORMATS:
        raise DtgError(f"--format must be one of {', '.join(FORMATS)}, got {fmt}")
    if not Path(checkpoint).exists():
        raise DtgError(f"{checkpoint}: no such checkpoint file or folder")
    model, meta = read_student(checkpoint, "cpu")
    info = describe(meta, model)
    out = Path(out)
    result = {"arch": info["arch"], "format": fmt}
    if fmt == "folder":
        save_student_folder(model, meta, out, info)
        (out / "README.md").write_text(README.format(name=out.name, **info))
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedStudent(model).eval()
    frames, size = info["frames"], info["size"]
    other = frames + 2 if info["temporal"] == "clip" else frames * 2
    build = _export_onnx if fmt == "onnx" else _export_pt2
    # a dynamic frame axis where the network runs at other lengths and the exporter keeps it; else batch only
    errors = []
    for dynamic_frames in ([True, False] if _runs_at(module, other, size) else [False]):
        try:
            run = build(module, out, frames, size, dynamic_frames, opset)
            diff = _check(run, module, [(2, frames), (3, frames)] + ([(1, other)] if dynamic_frames else []), size)
            break
        except DtgError:
            raise
        except Exception as e:
            out.unlink(missing_ok=True)
            errors.append(first_line(e))
    else:
        raise DtgError(f"{info['arch']} does not export to {fmt}: {errors[-1]}")
    if not diff <= tolerance:
        os.remove(out)
        raise DtgError(f"{out}: the exported {info['arch']} differs from PyTorch by {diff:.2e} (> {tolerance:g}); "
                       f"the file was removed")
    return {**result, "max_abs_diff": diff, "dynamic": ["batch"] + (["frames"] if dynamic_frames else []),
            "outputs": module.output_names()}
