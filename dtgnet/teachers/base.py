"""The frozen teacher: frames in, one embedding per frame out, mean-pooled over a sequence.

A teacher is always in eval mode, has no trainable parameters, and runs under ``torch.no_grad()``, so neither
gradients nor BN statistics change it. Where its frame encoder comes from is its source's business
(:mod:`dtgnet.teachers.sources`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD
from ..registry import TEACHER_SOURCES

DEFAULT_INPUT = 112  # input_size 0 for sources that carry no size of their own


class FrameEncoder(NamedTuple):
    """What a teacher source builds: a module mapping normalised ``(N, 3, S, S)`` frames to ``(N, D)``."""

    module: nn.Module
    input_size: int
    """The source's own input side (``teachers.input_size`` 0 takes it)."""
    mean: tuple
    std: tuple
    dim: int | None
    """Embedding width, or None to probe it with a forward pass."""


class Teacher(nn.Module):
    """Wraps a frame encoder ``(N, 3, S, S) normalised -> (N, D)`` with its own input size and normalisation."""

    def __init__(self, name: str, encoder: nn.Module, input_size: int, mean, std, embed_dim: int,
                 precision: str = "auto", compile: bool = False):
        super().__init__()
        self.name, self.input_size, self.embed_dim = name, input_size, embed_dim
        self.precision = precision
        self.encoder = encoder
        # compiled on first use; kept outside the module tree so state_dict keys stay the encoder's own
        self.__dict__["_compiled"] = torch.compile(encoder) if compile else None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # frozen: never leaves eval mode
        return super().train(False)

    @property
    def compiled(self) -> bool:
        """Whether frames go through ``torch.compile``'s wrapper of the encoder."""
        return self._compiled is not None

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, D)`` float32."""
        x = frames.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        x = (x - self.mean) / self.std
        run = self.encoder if self._compiled is None else self._compiled
        bf16 = self.precision == "bf16" or (self.precision == "auto" and x.is_cuda)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return run(x).flatten(1).float()

    @torch.no_grad()
    def per_frame(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``(B, T, 3, H, W)`` in [0, 1] -> ``(B, T, D)``: every frame's embedding."""
        b, t = seq.shape[:2]
        return self.embed_frames(seq.flatten(0, 1)).unflatten(0, (b, t))

    @torch.no_grad()
    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``(B, T, 3, H, W)`` in [0, 1] -> ``(B, D)``: mean over the sequence's frame embeddings."""
        return self.per_frame(seq).mean(1)  # (B, D)


def _probe_dim(encoder: nn.Module, size: int) -> int:
    with torch.no_grad():
        return int(encoder(torch.zeros(2, 3, size, size)).flatten(1).shape[1])


def build_teacher(cfg, class_names: list[str] | None = None) -> Teacher:
    """A frozen :class:`Teacher` from a :class:`~dtgnet.config.TeacherConfig`. ``class_names`` (the dataset's)
    fill a prompted teacher's prompts when its config lists no classes of its own."""
    source = TEACHER_SOURCES.get(cfg.source, "teachers.source")
    if source.video:
        from .video import build_video_teacher

        return build_video_teacher(cfg)
    encoder, own_size, mean, std, dim = source.build(cfg, class_names)
    size = cfg.input_size or own_size
    if dim is None:
        try:
            dim = _probe_dim(encoder, size)
        except Exception as e:
            raise ConfigError("teachers.input_size", f"teacher {cfg.name!r} does not run at {size}x{size} "
                                                     f"({type(e).__name__}: {first_line(e)})") from None
    return Teacher(cfg.name, encoder, size, mean, std, dim, cfg.precision, cfg.compile)


def callable_teacher(name: str, fn, input_size: int, embed_dim: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Teacher:
    """Any callable or module mapping normalised ``(N, 3, S, S)`` frames to ``(N, D)`` as a frozen teacher."""
    encoder = fn if isinstance(fn, nn.Module) else _Lambda(fn)
    return Teacher(name, encoder, input_size, mean, std, embed_dim)


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
