"""A dtgnet student as a video teacher (``teachers.source: student``): a student file or folder, e.g. one
pre-trained earlier, embeds each view as a whole clip (:mod:`dtgnet.teachers.video`)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import IMAGENET_MEAN, IMAGENET_STD
from ..teachers.sources import TeacherSource, register_source
from .files import read_student


class ClipEncoder(nn.Module):
    """A student's backbone as a clip encoder: ``(B, 3, T, S, S)`` normalised with ImageNet statistics ->
    ``(B, D)`` (the backbone normalises [0, 1] frames itself, so the teacher's normalisation is undone)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, x):
        return self.backbone((x * self.std + self.mean).transpose(1, 2))  # (B, T, 3, S, S) in [0, 1]


def _build(cfg):
    model, meta = read_student(cfg.weights, "cpu")
    data = meta["config"]["data"]
    frames, size = int(data["frames"]), int(data["size"])  # what it was trained on (TSM, ViT: fixed)
    return ClipEncoder(model.backbone), size, frames, IMAGENET_MEAN, IMAGENET_STD, model.backbone.feature_dim


def _check(key: str, cfg, check_paths: bool) -> None:
    if not cfg.weights:
        raise ConfigError(f"{key}.weights", "source student needs a dtgnet student file or folder")
    if check_paths and not Path(cfg.weights).exists():
        raise ConfigError(f"{key}.weights", f"not found: {cfg.weights}")


register_source(TeacherSource("student", _build, _check, video=True))
