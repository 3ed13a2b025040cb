"""Augmentation, consistent across the frames of a sequence; the two views of a video are drawn apart.

Every random choice comes from the item's own numpy generator (so a sample is the same in any worker and
after a resume, and torch's RNG is never touched). Geometry (random resized crop, flip) is applied per item
on uint8 frames, as torchvision's functional ops do it, since crops differ in size. Colour (jitter, grayscale) is
drawn per sequence as five numbers and applied to a whole batch of sequences at once, vectorised: per item,
a torchvision pipeline spent most of a prepared-data loader's time on these small tensors.

Colour semantics are torchvision's ``ColorJitter(0.4, 0.4, 0.3, 0.1)`` (applied with p = 0.8) then
``RandomGrayscale(p=0.2)``, on float frames, with the jitter ops in a fixed order (brightness, contrast,
saturation, hue) rather than a random one.
"""
from __future__ import annotations

import math
import platform

import numpy as np
import torch
from torch.nn.functional import interpolate

CROP_SCALE, CROP_RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.3, hue=0.1)
JITTER_P, GRAY_P = 0.8, 0.2
IDENTITY = (1.0, 1.0, 1.0, 0.0, 0.0)
"""Colour parameters that change nothing: brightness, contrast, saturation factors, hue shift, grayscale."""


def crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's RandomResizedCrop sampling (area in
    ``CROP_SCALE``, log-uniform aspect ratio in ``CROP_RATIO``, ten tries, then the central crop)."""
    area = height * width
    log_ratio = np.log(CROP_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _tv():
    """torchvision's functional ops, imported when first used: importing torchvision loads torch._dynamo
    (about 1.7 s), which every `dtgnet` command paid at start-up, even those that never resize a frame here."""
    from torchvision.transforms.v2 import functional

    return functional


# torchvision resizes uint8 natively where torch has a vectorised uint8 kernel, else through float32; the
# crop below calls that kernel directly (same result, without torchvision's per-call dispatch: a third of
# a prepared-data item's time went to it)
_NATIVE_UINT8_RESIZE = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                        or platform.machine() in ("aarch64", "arm64"))


def resized_crop(frames: torch.Tensor, top: int, left: int, h: int, w: int, size: int) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> uint8 ``(T, 3, size, size)``: torchvision's ``resized_crop`` (bilinear,
    antialiased) for a box inside the frame."""
    crop = frames[..., top:top + h, left:left + w]  # (T, 3, h, w)
    if (h, w) == (size, size):
        return crop
    if frames.device.type != "cpu" or not _NATIVE_UINT8_RESIZE:
        return _tv().resize(crop, [size, size], antialias=True)
    return interpolate(crop, size=[size, size], mode="bilinear", align_corners=False, antialias=True)


GEOMETRY = ("y0", "x0", "y1", "x1", "aspect", "flipped")
"""A view's geometry (:func:`random_geometry`): its crop box as fractions of the frame's height (y) and width
(x), the frame's width / height, and 1 where the view is mirrored."""


def random_geometry(frames: torch.Tensor, size: int, rng: np.random.Generator,
                    flip: bool) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 ``(T, 3, H, W)`` -> uint8 ``(T, 3, size, size)``: one crop (and flip) for every frame, and where it
    lies in the frame (float32 ``(6,)``, :data:`GEOMETRY`), so whatever was computed on whole frames (a cached
    teacher token grid) can be cut along it."""
    height, width = frames.shape[-2:]
    top, left, h, w = crop_box(rng, height, width)
    out = resized_crop(frames, top, left, h, w, size)
    flipped = flip and rng.random() < 0.5
    geometry = np.array([top / height, left / width, (top + h) / height, (left + w) / width, width / height,
                         float(flipped)], np.float32)
    return (out.flip(-1) if flipped else out), geometry


def random_colour(rng: np.random.Generator, strong: bool) -> torch.Tensor:
    """One sequence's colour parameters, ``(5,)``: see :data:`IDENTITY`."""
    if not strong:
        return torch.tensor(IDENTITY)
    b, c, s, h = IDENTITY[:4]
    if rng.random() < JITTER_P:
        b = rng.uniform(1 - JITTER["brightness"], 1 + JITTER["brightness"])
        c = rng.uniform(1 - JITTER["contrast"], 1 + JITTER["contrast"])
        s = rng.uniform(1 - JITTER["saturation"], 1 + JITTER["saturation"])
        h = rng.uniform(-JITTER["hue"], JITTER["hue"])
    return torch.tensor([b, c, s, h, float(rng.random() < GRAY_P)])


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, as torchvision: ``(..., 3, H, W)`` -> ``(..., 1, H, W)``."""
    r, g, b = x.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue in HSV by ``shift`` turns. ``x``: float ``(..., 3, H, W)`` in [0, 1]; ``shift``
    broadcastable to ``(..., 1, H, W)``. RGB -> (hue sextant, max, max - min) and back with
    ``c_n = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + hue) mod 6``, n = 5, 3, 1."""
    r, g, b = x.unbind(-3)
    hi, lo = x.amax(-3), x.amin(-3)  # (..., H, W)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    hue = torch.where(hi == r, (g - b) / safe, torch.where(hi == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = (hue + 6 * shift.squeeze(-3)).remainder(6)  # (..., H, W), in sextants
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(3, 1, 1)
    k = (n + hue.unsqueeze(-3)).remainder(6)  # (..., 3, H, W)
    return hi.unsqueeze(-3) - span.unsqueeze(-3) * torch.minimum(k, 4 - k).clamp(0, 1)


def apply_colour(frames: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, T, 3, S, S)`` sequences and their ``(N, 5)`` colour parameters -> float in [0, 1].
    Each sequence gets its own factors; contrast uses each frame's mean luma, as torchvision does."""
    x = frames.float().div_(255)
    if bool((params == torch.tensor(IDENTITY)).all()):  # nothing to do (no jitter drawn, or strong_aug off)
        return x
    b, c, s, h, gray = (p.view(-1, 1, 1, 1, 1) for p in params.to(x.device).unbind(1))  # each (N, 1, 1, 1, 1)
    x = (x * b).clamp_(0, 1)
    x = (c * x + (1 - c) * _gray(x).mean((-3, -2, -1), keepdim=True)).clamp_(0, 1)
    x = (s * x + (1 - s) * _gray(x)).clamp_(0, 1)
    x = shift_hue(x, h)
    return torch.where(gray > 0, _gray(x).expand_as(x), x)


def eval_view(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> float ``(T, 3, size, size)``: short side to ``size``, central crop."""
    F = _tv()
    out = F.center_crop(F.resize(frames, size, antialias=True), [size, size])
    return F.to_dtype(out, torch.float32, scale=True)


def to_tensor(frames) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` numpy -> uint8 ``(T, 3, H, W)`` tensor, a channels-last view without a copy
    (torchvision's uint8 resize is fastest on that layout)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)
