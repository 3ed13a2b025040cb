"""The frozen teacher: frames in, one embedding per frame out, mean-pooled over a sequence.

A teacher is always in eval mode, has no trainable parameters, and runs under ``torch.no_grad()``, so neither
gradients nor BN statistics change it. Where its frame encoder comes from is its source's business
(:mod:`dtgnet.teachers.sources`).
"""
from __future__ import annotations

import math
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
        self.__dict__["_token_dim"] = None
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

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> the encoder's input: its side, its normalisation."""
        x = frames.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        return (x - self.mean) / self.std

    def _autocast(self, x: torch.Tensor):
        bf16 = self.precision == "bf16" or (self.precision == "auto" and x.is_cuda)
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, D)`` float32."""
        x = self._prepare(frames)
        run = self.encoder if self._compiled is None else self._compiled
        with self._autocast(x):
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

    # -------------------------------------------------------------------------------- tokens
    @property
    def has_tokens(self) -> bool:
        """Whether the encoder gives a spatial token grid (``tokens``): masked token distillation."""
        return callable(getattr(self.encoder, "tokens", None))

    @property
    def token_dim(self) -> int:
        """Width ``C`` of the teacher's tokens (probed once with a forward pass)."""
        if self._token_dim is None:
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.mean.device)
            self.__dict__["_token_dim"] = int(self.token_maps(probe).shape[1])
        return self._token_dim

    @torch.no_grad()
    def token_maps(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, C, h, w)`` float32: the last block's patch tokens of
        a ViT, the last spatial feature map of a CNN (the encoder's ``tokens``)."""
        if not self.has_tokens:
            raise ConfigError("loss.token_weight", f"teacher {self.name!r} gives no tokens (its source has no "
                                                   f"spatial feature map; docs/TEACHERS.md lists those that do)")
        x = self._prepare(frames)
        with self._autocast(x):
            return self.encoder.tokens(x).float()

    @torch.no_grad()
    def sequence_tokens(self, seq: torch.Tensor, every: int, grid: tuple[int, int]) -> torch.Tensor:
        """``seq``: ``(B, T, 3, H, W)`` -> ``(B, T/every * h * w, C)``: the tokens of frames ``0, every, 2 every,
        ...`` (the first frame of each of the student's tubelets, as UMT pairs a tubelet with its frame),
        resampled to the student's ``(h, w)`` grid (:func:`resample_grid`), in the student's token order."""
        maps = resample_grid(self.token_maps(seq[:, ::every].flatten(0, 1)), grid)  # (B * T', C, h, w)
        return in_student_order(maps, seq.shape[0])


def in_student_order(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B * T', C, h, w)`` grids of each sequence's frames -> ``(B, T' * h * w, C)``: the student's token order
    (time, then row, then column)."""
    return maps.flatten(2).transpose(1, 2).unflatten(0, (batch, -1)).flatten(1, 2)


def patch_grid(tokens: torch.Tensor, prefix: int, who: str) -> torch.Tensor:
    """A ViT's ``(N, prefix + h * w, C)`` output tokens -> ``(N, C, h, w)``: class / register tokens dropped,
    the patches laid out on their square grid."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ConfigError("loss.token_weight", f"{who}: {patches.shape[1]} patch tokens after {prefix} prefix "
                                               f"tokens do not form a square grid")
    return patches.transpose(1, 2).unflatten(2, (side, side))


def resample_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, C, *grid)``. A finer teacher grid is averaged over the cells each student
    patch covers (adaptive average pooling: equal blocks when the sides divide); a coarser one is interpolated
    bilinearly (half-pixel centres, ``align_corners=False``)."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(grid):
        return maps
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(maps, grid)
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)


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
