"""Which frame indices make a sequence: TSN segments (2D students) or contiguous strided clips (3D)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4096)
def _segments(num_frames: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, width) of each of ``segments`` equal segments of ``[0, num_frames)``; read-only, shared."""
    edges = np.linspace(0, num_frames, segments + 1)  # (segments + 1,)
    lo, width = edges[:-1], np.diff(edges)
    lo.flags.writeable = width.flags.writeable = False
    return lo, width


def tsn_indices(num_frames: int, segments: int, rng: np.random.Generator | None = None,
                clip: int = 0, clips: int = 1) -> np.ndarray:
    """One frame per segment of ``[0, num_frames)``: random inside each segment when ``rng`` is given
    (training), else at position ``(clip + 0.5) / clips`` of every segment (deterministic evaluation)."""
    lo, width = _segments(num_frames, segments)
    if rng is not None:
        pos = lo + rng.random(segments) * width
    else:
        pos = lo + (clip + 0.5) / clips * width
    return np.minimum(pos.astype(np.int64), num_frames - 1)


def clip_indices(num_frames: int, length: int, stride: int, rng: np.random.Generator | None = None,
                 clip: int = 0, clips: int = 1) -> np.ndarray:
    """``length`` frames ``stride`` apart from a random start (training) or from ``clips`` evenly spaced
    starts (evaluation). Videos shorter than the span repeat their last frame."""
    span = (length - 1) * stride + 1
    room = max(num_frames - span, 0)
    if rng is not None:
        start = int(rng.integers(0, room + 1))
    else:
        start = int(round(room * (clip + 0.5) / clips)) if clips > 1 else room // 2
    return np.minimum(start + stride * np.arange(length), num_frames - 1)


def sequence_indices(num_frames: int, frames: int, stride: int, temporal: str,
                     rng: np.random.Generator | None = None, clip: int = 0, clips: int = 1) -> np.ndarray:
    if temporal == "segments":
        return tsn_indices(num_frames, frames, rng, clip, clips)
    return clip_indices(num_frames, frames, stride, rng, clip, clips)
