"""A trained student over whole videos, in bounded memory: the clips of each video (video-level evaluation
clips, or one per sliding window) are cut from one front-to-back decode, batched across videos and windows,
and reduced to one row of outputs per video or window.

The frames come through the same decoder as ``dtgnet data prepare`` and the teacher cache
(:class:`~dtgnet.data.bulk.Decode`: worker processes, chunks of frames scaled inside the decoder, a
per-file stall timeout), so memory depends on the window and batch sizes, never on a video's length or
resolution. A clip is complete when its last frame has arrived; frames no later clip needs are dropped at
once. Under torchrun each rank takes every ``world``-th video.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.bulk import Decode, loader, plan_videos
from ..data.sampling import sequence_indices
from ..data.transforms import eval_view
from ..dist import Dist

THUMBS_PER_VIDEO = 12
THUMB_SIDE = 96


@dataclass
class VideoPlan:
    """One video's clips: ``clips[c]`` the ``(T,)`` source frame indices of clip c, ``rows[c]`` the output row
    (video or window) it belongs to, ``spans[r]`` row r's (start, end) in seconds (None without a frame rate)."""

    number: int
    path: str
    frames: int
    fps: float
    clips: list[np.ndarray]
    rows: list[int]
    spans: list[tuple[float, float] | None]

    @property
    def duration(self) -> float | None:
        return self.frames / self.fps if self.fps > 0 else None

    def needed(self) -> np.ndarray:
        return np.unique(np.concatenate(self.clips))


@dataclass
class VideoResult:
    """A video's outputs: ``outputs[name]`` ``(rows, D)`` float32 (mean over each row's clips), or ``reason``
    when it could not be read; ``thumbs``: JPEG bytes of up to :data:`THUMBS_PER_VIDEO` rows' frames."""

    plan: VideoPlan
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    reason: str = ""
    thumbs: list[tuple[int, bytes]] = field(default_factory=list)


def window_spans(frames: int, fps: float, window: float, stride: float) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of ``window``-second windows every ``stride`` seconds; a last window ends
    at the video's end, and a video shorter than a window is one window."""
    length = max(1, int(round(window * fps)))
    if frames <= length:
        return [(0, frames)]
    step = max(1, int(round(stride * fps)))
    starts = list(range(0, frames - length + 1, step))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return [(s, s + length) for s in starts]


def plan_clips(number: int, path: str, frames: int, fps: float, clip_frames: int, stride: int, temporal: str,
               clips: int, window: float = 0.0, window_stride: float = 0.0) -> VideoPlan:
    """The clips of one video: ``clips`` evaluation clips as ``dtgnet eval`` samples them (one row), or with
    ``window`` seconds, one clip in the middle of each window (a row per window). Raises ValueError when a
    window is asked of a video without a frame rate."""
    if not window:
        idx = [sequence_indices(frames, clip_frames, stride, temporal, None, c, clips) for c in range(clips)]
        span = (0.0, frames / fps) if fps > 0 else None
        return VideoPlan(number, path, frames, fps, idx, [0] * clips, [span])
    if fps <= 0:
        raise ValueError("the file states no frame rate, so it has no windows in seconds")
    ranges = window_spans(frames, fps, window, window_stride or window)
    idx = [lo + sequence_indices(hi - lo, clip_frames, stride, temporal, None, 0, 1) for lo, hi in ranges]
    return VideoPlan(number, path, frames, fps, idx, list(range(len(ranges))),
                     [(lo / fps, hi / fps) for lo, hi in ranges])


def plan_inputs(paths: list[Path], reader, workers: int, shard: Dist, progress: bool, timeout: float,
                make_plan: Callable[[int, str, int, float], VideoPlan]) -> tuple[list[VideoPlan], list[VideoResult]]:
    """Every video's frame count and rate (read in parallel, each rank a share), then its clips. Returns the
    plans and the results of the videos that failed already (unreadable, or no plan possible)."""
    names = [str(p) for p in paths]
    videos, bad = plan_videos(paths, names, reader, 1, 0.0, workers, shard, progress, "read", timeout)
    reasons = {b["path"]: b["reason"] for b in bad}
    info = {v.path: v for v in videos}
    plans, failed = [], []
    for number, name in enumerate(names):
        if name in reasons:
            failed.append(VideoResult(VideoPlan(number, name, 0, 0.0, [], [], []), reason=reasons[name]))
            continue
        v = info[name]
        try:
            plans.append(make_plan(number, name, v.source_frames, v.fps))
        except ValueError as e:
            failed.append(VideoResult(VideoPlan(number, name, v.source_frames, v.fps, [], [], []), reason=str(e)))
    return plans, failed


def _jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class _Assembly:
    """The clips of one video as its frames arrive in order: a clip is handed out once its last frame is
    here, and frames no clip still to come needs are dropped."""

    def __init__(self, plan: VideoPlan, thumbs: bool):
        self.plan = plan
        self.order = sorted(range(len(plan.clips)), key=lambda c: int(plan.clips[c].max()))
        firsts = [int(plan.clips[c].min()) for c in self.order] + [np.iinfo(np.int64).max]
        self.low_after = np.minimum.accumulate(firsts[::-1])[::-1]  # low_after[k]: first frame clips k.. need
        self.next = 0
        self.frames: dict[int, np.ndarray] = {}
        self.pending = len(plan.clips)
        self.sums: dict[str, np.ndarray] = {}
        self.counts = np.zeros(len(plan.spans))
        self.decoded = False
        self.reason = ""
        rows = len(plan.spans)
        self.thumb_rows = set(np.linspace(0, rows - 1, min(rows, THUMBS_PER_VIDEO)).round().astype(int).tolist()) \
            if thumbs else set()
        self.thumbs: list[tuple[int, bytes]] = []

    def add(self, indices: np.ndarray, frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Frames at ``indices`` arrived; returns the completed ``(clip, uint8 (T, S, S, 3))``."""
        for i, f in zip(indices.tolist(), frames):
            self.frames[i] = f
        last, done = int(indices[-1]), []
        while self.next < len(self.order) and int(self.plan.clips[self.order[self.next]].max()) <= last:
            c = self.order[self.next]
            clip = np.stack([self.frames[i] for i in self.plan.clips[c].tolist()])  # (T, S, S, 3)
            done.append((c, clip))
            row = self.plan.rows[c]
            if row in self.thumb_rows:
                self.thumb_rows.discard(row)
                self.thumbs.append((row, _jpeg(clip[len(clip) // 2])))
            self.next += 1
        if done:
            low = self.low_after[self.next]
            self.frames = {i: f for i, f in self.frames.items() if i >= low}
        return done

    def take(self, clip: int, outputs: dict[str, np.ndarray]) -> None:
        row = self.plan.rows[clip]
        for name, value in outputs.items():
            if name not in self.sums:
                self.sums[name] = np.zeros((len(self.plan.spans), len(value)), dtype=np.float64)
            self.sums[name][row] += value
        self.counts[row] += 1
        self.pending -= 1

    def result(self) -> VideoResult:
        if self.reason:
            return VideoResult(self.plan, reason=self.reason)
        outputs = {k: (v / self.counts[:, None]).astype(np.float32) for k, v in self.sums.items()}
        return VideoResult(self.plan, outputs, thumbs=sorted(self.thumbs))


def run_clips(model, plans: list[VideoPlan], reader, size: int, batch_size: int, device, workers: int,
              outputs: Callable[[torch.nn.Module, torch.Tensor], dict[str, torch.Tensor]], timeout: float = 0.0,
              thumbs: bool = False, on_clips: Callable[[int], None] = lambda n: None) -> Iterator[VideoResult]:
    """Run ``outputs(model, clips (B, T, 3, S, S) in [0, 1]) -> {name: (B, D)}`` on every clip of ``plans``
    and yield each video's :class:`VideoResult` as soon as it is complete (in completion order).

    Frames are decoded at twice ``size`` (short side, centre crop) and brought to ``size`` as ``dtgnet eval``
    does (:func:`~dtgnet.data.transforms.eval_view`)."""
    model.eval()
    assembly = {p.number: _Assembly(p, thumbs) for p in plans}
    needed = {p.number: p.needed() for p in plans}
    queue: list[tuple[int, int, np.ndarray]] = []  # (video, clip, uint8 (T, S2, S2, 3))

    def run_batch() -> None:
        if not queue:
            return
        clips = torch.from_numpy(np.stack([q[2] for q in queue]))  # (B, T, S2, S2, 3)
        b, t = clips.shape[:2]
        x = eval_view(clips.flatten(0, 1).permute(0, 3, 1, 2), size).unflatten(0, (b, t))  # (B, T, 3, S, S)
        with torch.no_grad():
            out = {k: v.float().cpu().numpy() for k, v in outputs(model, x.to(device)).items()}  # each (B, D)
        for j, (number, clip, _) in enumerate(queue):
            assembly[number].take(clip, {k: v[j] for k, v in out.items()})
        on_clips(len(queue))
        queue.clear()

    def finished() -> Iterator[VideoResult]:
        for number in [n for n, a in assembly.items() if a.decoded and a.pending == 0]:
            yield assembly.pop(number).result()

    jobs = [(p.number, p.path, needed[p.number].tolist()) for p in plans]
    for number, pos, chunk, reason in loader(Decode(jobs, reader, [2 * size], timeout), workers):
        a = assembly.get(number)
        if a is None:
            continue
        if pos >= 0:
            if not a.reason:
                indices = needed[number][pos:pos + len(chunk[0])]
                queue += [(number, c, clip) for c, clip in a.add(indices, chunk[0])]
                if len(queue) >= batch_size:
                    run_batch()
                    yield from finished()
            continue
        a.decoded = True
        if not reason and a.next < len(a.order):
            reason = f"decoding ended before frame {int(a.plan.clips[a.order[a.next]].max())}"
        if reason:  # its clips already queued are computed and ignored
            a.reason, a.frames = reason, {}
            a.pending = sum(1 for q in queue if q[0] == number)
        yield from finished()
    run_batch()
    yield from finished()
