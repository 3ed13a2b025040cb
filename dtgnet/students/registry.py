"""The backbone contract and the student architecture registry.

A backbone maps ``(B, T, 3, H, W)`` frames in [0, 1] to ``(B, feature_dim)`` and normalises its input itself.
It declares:

* ``feature_dim``: the width of its feature;
* ``temporal``: ``"segments"`` (T frames spread over the whole video, TSN-style) or ``"clip"`` (T contiguous
  frames at ``data.stride``), which tells the data path how to sample;
* optionally ``per_segment(x) -> (B, T, feature_dim)``: one feature per segment before the consensus, which
  per-segment alignment (``loss.segment_weight``) needs;
* ``tokens(x) -> (B, N, feature_dim)``: its last tokens before pooling (ViT tokens, a CNN's last feature map
  positions), which the attentive probe (``dtgnet eval --protocol attentive``) reads.

Each architecture registers one :class:`StudentArch` in :data:`~dtgnet.registry.STUDENTS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..registry import STUDENTS


class Backbone(Protocol):
    feature_dim: int
    temporal: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def _no_check(cfg) -> None:
    pass


@dataclass(frozen=True)
class StudentArch:
    name: str
    build: Callable[..., nn.Module]
    """``build(frames=, size=, temporal_shift=, patch_size=, tubelet=)`` -> backbone; each takes what it needs."""
    check: Callable[[object], None] = _no_check
    """``check(config)``: raise :class:`~dtgnet.errors.ConfigError` on a setting this architecture cannot run."""
    per_segment: bool = False
    """The backbone has ``per_segment`` (one feature per segment)."""
    init_from: bool = False
    """``student.init_from`` can initialise it from an image model."""
    checkpointing: bool = False
    """``student.checkpointing``: its backbone has a ``checkpointing`` switch (recompute activations)."""
    tokens: bool = False
    """Its backbone encodes a token grid and can hide tokens (``masked``, ``grid``): masking and token
    distillation (``student.mask_ratio``, ``loss.token_weight``)."""


def register_student(arch: StudentArch) -> StudentArch:
    return STUDENTS.add(arch.name, arch)
