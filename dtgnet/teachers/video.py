"""Video teachers: a frozen video model that embeds each view as a whole clip, beside the image teachers (MVD's
co-teaching: a big video model and an image model distilled into one small student).

Sources (``teachers.source``):

* ``student``: a dtgnet student file or folder (``teachers.weights``), e.g. one pre-trained earlier
  (registered by :mod:`dtgnet.students.as_teacher`: students come after teachers in the package's layers);
* ``torchvision_video``: a torchvision video classifier by weight name (``teachers.weights``:
  ``R3D_18_Weights.KINETICS400_V1``, ``S3D_Weights.KINETICS400_V1``, ``MViT_V2_S_Weights.KINETICS400_V1``...),
  read from the torch hub cache, classifier removed;
* ``hf_video``: a Hugging Face VideoMAE (``teachers.model``: an id such as ``MCG-NJU/videomae-base`` or a local
  folder), the mean of its last tokens.

A view's frames are resampled in time to the count a model is built for (evenly; a model that takes any count
gets the view's own) and resized to its input side. Video teachers run online only: a view is a random draw
of frames and crops, and a clip embedding depends on all of them together, so unlike a per-frame embedding
there is nothing to compute once per video and look up (a teacher cache holds the image teachers beside them), and per-segment
terms, which need one embedding per frame, cannot use them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD, require_extra
from ..registry import TEACHER_SOURCES
from .sources import TeacherSource, _strip_last_linear, register_source, torchvision_model


class VideoTeacher(nn.Module):
    """A frozen clip encoder ``(B, 3, T, S, S) normalised -> (B, D)`` behind the teacher interface: ``(B, T, 3,
    H, W)`` views in [0, 1] -> ``(B, D)``."""

    def __init__(self, name: str, encoder: nn.Module, input_size: int, frames: int, mean, std, embed_dim: int,
                 precision: str = "auto"):
        super().__init__()
        self.name, self.input_size, self.frames, self.embed_dim = name, input_size, frames, embed_dim
        self.precision, self.encoder = precision, encoder
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # frozen: never leaves eval mode
        return super().train(False)

    def prepare(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] -> the encoder's normalised ``(B, 3, T', S, S)``."""
        b, t = seq.shape[:2]
        if self.frames and t != self.frames:  # evenly over the view's frames
            seq = seq[:, torch.linspace(0, t - 1, self.frames).round().long().to(seq.device)]
        x = seq.float().flatten(0, 1)  # (B*T', 3, H, W)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        x = x.unflatten(0, (b, -1)).transpose(1, 2)  # (B, 3, T', S, S)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = self.prepare(seq)
        bf16 = self.precision == "bf16" or (self.precision == "auto" and x.is_cuda)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.encoder(x).flatten(1).float()

    def per_frame(self, seq: torch.Tensor) -> torch.Tensor:
        raise ConfigError("loss.segment_weight", f"teacher {self.name!r} embeds whole clips, not frames")


def torchvision_video_encoder(weight_name: str) -> tuple[nn.Module, tuple, tuple, int, int, str]:
    """A torchvision video classifier by weight name, classifier removed: (model, mean, std, dim, input side,
    model name)."""
    model, weights, builder = torchvision_model(weight_name, video=True)
    dim = _strip_s3d_classifier(model) if builder == "s3d" else _strip_last_linear(model)
    tf = weights.transforms()
    return model, tuple(tf.mean), tuple(tf.std), dim, int(tf.crop_size[0]), builder


def _strip_s3d_classifier(model: nn.Module) -> int:
    """S3D classifies with a 1x1x1 convolution: pool the features instead."""
    conv = model.classifier[-1]
    model.classifier = nn.Identity()
    model.avgpool = nn.Sequential(model.avgpool, nn.AdaptiveAvgPool3d(1))
    return conv.in_channels


def _build_torchvision_video(cfg):
    model, mean, std, dim, size, builder = torchvision_video_encoder(cfg.weights)
    # MViT's position table is for 16 frames and S3D's last pooling needs 14 or more: their training length
    frames = 16 if builder.startswith(("mvit", "s3d")) else 0
    return model, size, frames, mean, std, dim


class _VideoMAEEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):  # (B, 3, T, S, S) -> VideoMAE's (B, T, 3, S, S)
        return self.model(pixel_values=x.transpose(1, 2)).last_hidden_state.mean(1)


def _build_hf_video(cfg):
    transformers = require_extra("transformers", "hf")
    local = Path(cfg.model).is_dir()
    try:
        model = transformers.VideoMAEModel.from_pretrained(cfg.model, local_files_only=local)
    except Exception as e:
        raise CheckpointError(f"hf_video {cfg.model}: cannot load a VideoMAE ({first_line(e)})") from None
    c = model.config
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # VideoMAE's image processor normalises with ImageNet's
    return _VideoMAEEncoder(model.eval()), int(c.image_size), int(c.num_frames), mean, std, int(c.hidden_size)


def _needs_model(key: str, cfg, check_paths: bool) -> None:
    if not cfg.model:
        raise ConfigError(f"{key}.model", "hf_video needs a model id or a local folder")


def _check_torchvision_video(key: str, cfg, check_paths: bool) -> None:
    if "." not in cfg.weights:
        raise ConfigError(f"{key}.weights",
                          f"expected a weight name such as R3D_18_Weights.KINETICS400_V1, got {cfg.weights!r}")


def build_video_teacher(cfg) -> VideoTeacher:
    """A frozen :class:`VideoTeacher` from a :class:`~dtgnet.config.TeacherConfig` of a video source."""
    encoder, own_size, frames, mean, std, dim = TEACHER_SOURCES.get(cfg.source, "teachers.source").build(cfg)
    return VideoTeacher(cfg.name, encoder.eval(), cfg.input_size or own_size, frames, mean, std, dim, cfg.precision)


register_source(TeacherSource("torchvision_video", _build_torchvision_video, _check_torchvision_video, video=True))
register_source(TeacherSource("hf_video", _build_hf_video, _needs_model, video=True))
