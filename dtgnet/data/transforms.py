"""Per-sequence augmentation, consistent across the frames of a sequence (torchvision.transforms.v2).

v2 transforms draw their random parameters once per call and apply them to every leading-dimension slice of
a ``(T, C, H, W)`` tensor, so one call augments a whole sequence consistently; the two views of a video are
two separate calls and differ.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(size: int, flip: bool = True, strong: bool = True) -> v2.Compose:
    ops: list = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    if strong:
        ops += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.3, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


def eval_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)])


def to_tensor(frames) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` numpy -> uint8 ``(T, 3, H, W)`` tensor."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
