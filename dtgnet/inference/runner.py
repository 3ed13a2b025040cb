"""The set-up ``predict`` and ``embed`` share: a student file opened for inference, the options that say how
clips are cut and run, and a pass over many videos with a progress bar, sharded over torchrun ranks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from ..config import Config, build_section
from ..data.bulk import join_shards
from ..data.video import get_reader
from ..dist import Dist, default_workers
from ..errors import DtgError
from ..students import read_student
from ..training import pick_device
from .stream import VideoPlan, VideoResult, plan_clips, plan_inputs, run_clips


@dataclass(frozen=True)
class Options:
    """How videos are cut into clips and run."""

    clips: int = 0
    """Clips per video for a video-level result (0: the checkpoint's data.eval_clips)."""
    window: float = 0.0
    """Seconds per window for a timeline (0: one result per video)."""
    window_stride: float = 0.0
    """Seconds between window starts (0: the window length)."""
    batch: int = 16
    """Clips per forward pass, gathered across videos and windows."""
    workers: int = -1
    """Decoding processes (-1: the cores available; 0: in this process)."""
    device: str = "auto"
    """cpu, cuda or auto."""
    timeout: float = 60.0
    """Seconds a file's decoder may go without progress before the file is given up (0: never)."""
    backend: str = "pyav"
    """Video decoder."""
    progress: bool = True

    def check(self) -> None:
        for name, value, low in (("--clips", self.clips, 0), ("--window", self.window, 0),
                                 ("--stride", self.window_stride, 0), ("--batch", self.batch, 1),
                                 ("--workers", self.workers, -1), ("--decode-timeout", self.timeout, 0)):
            if value < low:
                raise DtgError(f"{name} must be >= {low}, got {value}")
        if self.window_stride and not self.window:
            raise DtgError("--stride needs --window")


@dataclass
class Student:
    """A student ready for inference: the model (eval mode, on ``device``), its file's metadata and config."""

    model: torch.nn.Module
    meta: dict
    cfg: Config
    device: torch.device
    path: str


def open_student(path, device: str = "auto") -> Student:
    """Load a run checkpoint, ``student.safetensors`` or student folder for inference."""
    if not Path(path).exists():
        raise DtgError(f"{path}: no such checkpoint file or folder")
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    model, meta = read_student(path, dev)
    return Student(model, meta, build_section(Config, meta["config"]), dev, str(path))


@dataclass
class Pass:
    """A pass over videos, set up: this process's place in the job, its decoder and workers, every video's
    clips (``plans``) and the videos that failed already (``failed``)."""

    shard: Dist
    reader: object
    workers: int
    plans: list[VideoPlan]
    failed: list[VideoResult]


def plan_pass(student: Student, paths: list[Path], opts: Options) -> Pass:
    """Check ``opts``, join the torchrun job (if any) and plan every video's clips for ``student``."""
    opts.check()
    shard = join_shards()
    workers = default_workers() if opts.workers == -1 else opts.workers
    reader = get_reader(opts.backend)
    plans, failed = plan_inputs(paths, reader, workers, shard, opts.progress, opts.timeout,
                                plan_for(student.cfg, student.model.temporal, opts))
    return Pass(shard, reader, workers, plans, failed)


def run_videos(student: Student, paths: list[Path], opts: Options, outputs: Callable, thumbs: bool = False,
               desc: str = "videos") -> tuple[list[VideoResult], Dist]:
    """Every video of ``paths`` through ``outputs`` (see :func:`~dtgnet.inference.stream.run_clips`): rank 0
    gets every result in input order, other ranks an empty list."""
    from tqdm import tqdm

    p = plan_pass(student, paths, opts)
    shard, cfg = p.shard, student.cfg
    mine = [v for v in p.plans if v.number % shard.world == shard.rank]
    results = [f for f in p.failed if f.plan.number % shard.world == shard.rank]
    bar = tqdm(total=len(mine), desc=desc, unit="video", disable=not (opts.progress and shard.main))
    for result in run_clips(student.model, mine, p.reader, cfg.data.size, opts.batch, student.device, p.workers,
                            outputs, opts.timeout, thumbs):
        results.append(result)
        bar.update(1)
    bar.close()
    every = [r for part in shard.gather_objects(results) for r in part] if shard.world > 1 else results
    return (sorted(every, key=lambda r: r.plan.number) if shard.main else []), shard


def plan_for(cfg: Config, temporal: str, opts: Options) -> Callable[[int, str, int, float], VideoPlan]:
    """``make_plan(number, path, frames, fps)``: a video's clips for the student of ``cfg``, as ``opts`` cut them."""
    return partial(plan_clips, clip_frames=cfg.data.frames, stride=cfg.data.stride, temporal=temporal,
                   clips=opts.clips or cfg.data.eval_clips, window=opts.window, window_stride=opts.window_stride)
