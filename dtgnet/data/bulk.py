"""Decoding whole datasets once, for `dtgnet data prepare` and the teacher cache.

* **Bounded memory**: every video is decoded front to back and scaled inside the decoder
  (:func:`~dtgnet.data.video.iter_square_frames`); frames travel in chunks of ``CHUNK`` and are written
  where they belong as they arrive, so peak memory depends on neither a video's length nor its resolution.
* **Parallel**: ``workers`` DataLoader processes decode different videos at once.
* **Temporal subsampling**: a video keeps every ``stride``-th frame (or the stride that comes closest to a
  target ``fps``); the index keeps the source's frame count and stride, so readers map source frame numbers
  to the nearest kept frame and sampling is unchanged.
* **Resumable**: finished videos are journalled (``<output>.progress/``) only after their rows are on disk;
  an interrupted run started again with the same plan decodes only what is missing, and a half-written video
  is decoded again.
* **Sharded**: under torchrun each rank takes every ``world``-th video and writes its rows into the same
  output; rank 0 finishes it. The result is identical to a single-process run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..dist import Dist, init_distributed
from ..errors import DtgError, VideoDecodeError, raised_in_worker
from ..io import RowFile, write_text_atomic
from .video import iter_square_frames, stall_limited

CHUNK = 32  # frames per message from a decoding worker
JOURNAL_EVERY_S = 2.0


def join_shards() -> Dist:
    """Join the torchrun job described by the environment (gloo: these jobs only exchange small objects)."""
    return init_distributed(timeout_s=None, backend="gloo")


@dataclass(frozen=True)
class Video:
    """One video of a plan: source frame count and fps, the stride kept, and its first row in the output."""

    path: str
    source_frames: int
    fps: float
    stride: int
    row: int

    @property
    def kept(self) -> int:
        return -(-self.source_frames // self.stride)

    def keep(self) -> range:
        return range(0, self.source_frames, self.stride)


def choose_stride(fps: float, stride: int, target_fps: float) -> int:
    """``stride`` as given, or the one whose kept frame rate comes closest to ``target_fps``."""
    if target_fps > 0 and fps > 0:
        return max(1, round(fps / target_fps))
    return max(1, stride)


class _Info(Dataset):
    def __init__(self, paths: list[Path], reader, timeout: float = 0.0):
        self.paths, self.reader, self.timeout = paths, reader, timeout

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            path = self.paths[i]
            info = next(stall_limited((self.reader.info(path) for _ in (0,)), self.timeout, path))
            return i, info.num_frames, info.fps, ""
        except VideoDecodeError as e:
            return i, 0, 0.0, e.reason


def _as_is(item):
    return item


def loader(dataset, workers: int):
    """The dataset's items through ``workers`` processes; an error raised in one comes out as the one line
    it was raised with."""
    try:
        yield from DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                              collate_fn=_as_is)
    except DtgError as e:
        raise raised_in_worker(e) from None


def plan_videos(paths: list[Path], names: list[str], reader, stride: int, target_fps: float, workers: int,
                shard: Dist, progress: bool, desc: str, timeout: float = 0.0) -> tuple[list[Video], list[dict]]:
    """Count every video's frames (in parallel, each rank a share) and give each its rows in the output.
    Returns (readable videos in list order, unreadable ones as ``{"path", "reason"}``). ``timeout``: seconds
    without progress after which a file's demuxer is stopped and the file counted unreadable (0: none)."""
    from tqdm import tqdm

    mine = list(range(shard.rank, len(paths), shard.world))
    found = {}
    bar = tqdm(total=len(mine), desc=f"{desc}: count frames", disable=not progress, unit="video")
    for i, n, fps, reason in loader(_Info([paths[j] for j in mine], reader, timeout), workers):
        found[mine[i]] = (n, fps, reason)
        bar.update(1)
    bar.close()
    merged = {k: v for part in shard.gather_objects(found) for k, v in part.items()}
    videos, bad, row = [], [], 0
    for j, name in enumerate(names):
        n, fps, reason = merged[j]
        if reason:
            bad.append({"path": name, "reason": reason})
            continue
        v = Video(name, n, fps, choose_stride(fps, stride, target_fps), row)
        videos.append(v)
        row += v.kept
    return videos, bad


def npy_header(shape: tuple, dtype) -> bytes:
    """The header of a ``.npy`` file of ``shape`` and ``dtype``; the rows follow it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def plan_key(videos: list[Video], root: Path, extra: dict) -> str:
    """What the output depends on: the plan, each source's size and modification time, and ``extra``."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for v in videos:
        st = (root / v.path).stat()
        h.update(json.dumps([v.path, v.source_frames, v.stride, v.row, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:24]


class Decode(IterableDataset):
    """Yields ``(video number, first kept position, [uint8 (k, S, S, 3) per size], error)`` chunks of each
    job ``(number, path, frame indices to keep)``, then ``(number, -1, [], reason or '')`` when the video is
    done; each DataLoader worker takes every ``num_workers``-th video. ``timeout``: seconds without decoding
    progress after which a video is given up as unreadable (0: none)."""

    def __init__(self, jobs: list[tuple[int, Path, Sequence[int]]], reader, sizes: Sequence[int],
                 timeout: float = 0.0):
        self.jobs, self.reader, self.sizes, self.timeout = jobs, reader, list(sizes), timeout

    def __iter__(self):
        info = get_worker_info()
        jobs = self.jobs[info.id::info.num_workers] if info else self.jobs
        for number, path, keep in jobs:
            pos, frames = 0, [[] for _ in self.sizes]
            try:
                frames_of = iter_square_frames(self.reader, path, self.sizes, keep)
                for _, per_size in stall_limited(frames_of, self.timeout, path):
                    for buf, f in zip(frames, per_size):
                        buf.append(f)
                    if len(frames[0]) == CHUNK:
                        yield number, pos, [np.stack(b) for b in frames], ""
                        pos, frames = pos + CHUNK, [[] for _ in self.sizes]
                if frames[0]:
                    yield number, pos, [np.stack(b) for b in frames], ""
            except VideoDecodeError as e:
                yield number, -1, [], e.reason
                continue
            yield number, -1, [], ""  # the video is complete


class Journal:
    """``<dir>/plan`` holds the plan key; ``<dir>/done.<rank>`` one line per finished video (``number`` or
    ``number<TAB>reason`` for an unreadable one). A journal of another plan, or one whose output is gone
    (``resumable`` false), is started afresh; ``fresh`` says so (the output must then be created anew)."""

    def __init__(self, directory: Path, key: str, shard: Dist, resumable: bool = True):
        self.dir, self.shard = directory, shard
        plan, fresh = directory / "plan", None
        if shard.rank == 0:
            fresh = not (resumable and plan.is_file() and plan.read_text() == key)
            if fresh:
                if directory.exists():
                    self.remove()
                directory.mkdir(parents=True)
                write_text_atomic(plan, key)
        shard.barrier()
        self.fresh = shard.gather_objects(fresh)[0]
        self.done = self.read()
        self._fh = open(directory / f"done.{shard.rank}", "a")
        self._pending: list[str] = []
        self._last = time.monotonic()

    def read(self) -> dict[int, str]:
        """Every rank's finished videos: number -> '' or the reason it was unreadable."""
        done: dict[int, str] = {}
        for f in sorted(self.dir.glob("done.*")):
            for line in f.read_text().splitlines():
                if line.strip():
                    number, _, reason = line.partition("\t")
                    done[int(number)] = reason
        return done

    def finished(self, number: int, reason: str, sync: Callable[[], None]) -> None:
        self._pending.append(f"{number}\t{reason}" if reason else str(number))
        if time.monotonic() - self._last > JOURNAL_EVERY_S:
            self.flush(sync)

    def flush(self, sync: Callable[[], None]) -> None:
        """Make the rows durable first, then say so: a crash never journals a video whose rows are lost."""
        if self._pending:
            sync()
            self._fh.write("\n".join(self._pending) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._pending = []
        self._last = time.monotonic()

    def close(self) -> None:
        self._fh.close()

    def create_outputs(self, outputs: list[tuple[Path, int]]) -> None:
        """On a fresh plan, rank 0 creates each ``(path, bytes)`` output with its space reserved; a full disk
        leaves no journal behind either."""
        if self.shard.rank == 0 and self.fresh:
            try:
                for path, nbytes in outputs:
                    RowFile(path, nbytes, create=True).close()
            except BaseException:
                self.close()
                self.remove()
                for path, _ in outputs:
                    path.unlink(missing_ok=True)
                raise
        self.shard.barrier()

    def remove(self) -> None:
        """Delete the journal (its files are flat: no sub-directories)."""
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()


def decode_all(videos: list[Video], root: Path, reader, sizes: Sequence[int], workers: int,
               consume: Callable[[Video, int, list[np.ndarray]], None], progress: bool, desc: str,
               journal: Journal | None = None, sync: Callable[[], None] = lambda: None) -> dict[int, str]:
    """Decode the videos (with a journal: this rank's share of those not yet journalled) and hand every
    chunk to ``consume(video, first kept position, [frames per size])``. A video is journalled, with its
    reason if it turned out unreadable, once ``sync()`` has made its rows durable. Returns the videos that
    failed here: number -> reason."""
    from tqdm import tqdm

    shard = journal.shard if journal else Dist()
    done = journal.done if journal else {}
    todo = [(k, v) for k, v in enumerate(videos) if k % shard.world == shard.rank and k not in done]
    bar = tqdm(total=sum(v.kept for _, v in todo), desc=desc, disable=not progress, unit="frame",
               unit_scale=True)
    failed = {}
    jobs = [(k, root / v.path, v.keep()) for k, v in todo]
    for number, pos, chunk, reason in loader(Decode(jobs, reader, sizes), workers):
        if pos >= 0:
            consume(videos[number], pos, chunk)
            bar.update(len(chunk[0]))
            continue
        if reason:
            failed[number] = reason
        if journal:
            journal.finished(number, reason, sync)
    if journal:
        journal.flush(sync)
    bar.close()
    return failed


def journalled_bad(journal: Journal, videos: list[Video]) -> list[dict]:
    """Unreadable videos recorded by every rank (and by earlier, interrupted runs); after a barrier."""
    return [{"path": videos[k].path, "reason": r} for k, r in sorted(journal.read().items()) if r]
