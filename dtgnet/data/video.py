"""Video decoding: frames at given indices as uint8 ``(T, H, W, 3)`` arrays.

A frame's index is its position in decode (presentation) order, so indices stay correct on variable frame
rate and 30000/1001 fps files. Display rotation stored in the file is applied. PyAV is the default back-end;
decord and torchcodec are used when installed and asked for. Pre-extracted frame folders read the same way.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import VideoDecodeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


class _Stall:
    """The decode-timeout state of this process: while ``seconds`` is set, a SIGALRM that many seconds after
    the last sign of progress stops the decoder (see :func:`stall_limited`)."""

    seconds = 0.0
    path = ""


def _progress() -> None:
    """The decoder moved on (a packet read, a frame decoded): restart the stall clock, if one runs."""
    if _Stall.seconds:
        signal.setitimer(signal.ITIMER_REAL, _Stall.seconds)


def _stalled(signum, frame):
    raise VideoDecodeError(_Stall.path, f"decoding made no progress for {_Stall.seconds:g} s (decode timeout)")


def stall_limited(items, seconds: float, path):
    """``items`` (an iterator that decodes ``path``), stopped with a :class:`VideoDecodeError` when producing
    the next item makes no progress for ``seconds``: a decoder that loops or blocks becomes a reason, not a
    hung job. Progress is a packet demuxed or a frame decoded by PyAV (other back-ends: an item). Only time
    spent producing items counts, not the caller's work between them. Timed with SIGALRM, so only in a
    process's main thread (DataLoader workers and the CLI run there); elsewhere, or with ``seconds`` 0,
    untimed. A decoder blocked inside one FFmpeg call is not interrupted (Python handles signals between its
    own instructions)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield from items
        return
    previous = signal.signal(signal.SIGALRM, _stalled)
    _Stall.path = str(path)
    try:
        while True:
            _Stall.seconds = seconds
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                _Stall.seconds = 0.0
                signal.setitimer(signal.ITIMER_REAL, 0)
            yield item
    finally:
        _Stall.seconds = 0.0
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def short_side_dims(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter one is ``short``."""
    scale = short / min(width, height)
    return max(short, round(width * scale)), max(short, round(height * scale))


def center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of an ``(H, W, C)`` frame (offsets rounded as torchvision does)."""
    h, w = frame.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frame[top:top + size, left:left + size]


def rotate_frame(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, as FFmpeg's display matrix reports it)."""
    turns = (int(round(degrees / 90.0)) % 4)
    return np.ascontiguousarray(np.rot90(frame, k=turns)) if turns else frame


def _demuxed(container, stream):
    """The stream's packets that hold a frame, read without decoding."""
    for packet in container.demux(stream):
        _progress()
        if packet.size > 0 and packet.pts is not None:
            yield packet


class PyAVReader:
    """PyAV (FFmpeg). A video's presentation timestamps are read once by demuxing (no decoding) and give the
    exact frame count and the index -> timestamp map, so a read seeks to the keyframe before the first wanted
    frame and decodes only from there, exactly also on variable-frame-rate files."""

    name = "pyav"

    def __init__(self, table_cache: int = 256):
        self._tables: OrderedDict[str, tuple[np.ndarray, float, int, int]] = OrderedDict()
        self._cache_size = table_cache

    def _table(self, path: Path) -> tuple[np.ndarray, float, int, int]:
        """(sorted pts of every frame, average fps, width, height), cached per file."""
        import av

        key = str(path)
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        _check_file(path)
        try:
            with av.open(key) as container:
                if not container.streams.video:
                    raise VideoDecodeError(path, "no video stream")
                stream = container.streams.video[0]
                pts = np.sort(np.array([p.pts for p in _demuxed(container, stream)], dtype=np.int64))
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                w, h = stream.codec_context.width, stream.codec_context.height
        except VideoDecodeError:
            raise
        except Exception as e:  # PyAV raises many FFmpeg error types
            raise VideoDecodeError(path, f"cannot open: {type(e).__name__}: {e}") from None
        if len(pts) == 0 or w <= 0 or h <= 0:
            raise VideoDecodeError(path, "no decodable frames")
        self._tables[key] = (pts, rate, w, h)
        if len(self._tables) > self._cache_size:
            self._tables.popitem(last=False)
        return self._tables[key]

    def info(self, path: str | os.PathLike) -> VideoInfo:
        pts, rate, w, h = self._table(Path(path))
        return VideoInfo(num_frames=len(pts), fps=rate, width=w, height=h)

    def read(self, path: str | os.PathLike, indices: Sequence[int], short_side: int | None = None) -> np.ndarray:
        """Frames at ``indices`` as uint8 ``(T, H, W, 3)``. ``short_side``: a source larger than that is scaled
        down inside the decoder (libswscale, area filter) so its short side is ``short_side`` (aspect kept):
        far cheaper than converting full HD frames to RGB only to shrink them afterwards."""
        import av

        path = Path(path)
        pts_table = self._table(path)[0]
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            raise ValueError("no frame indices requested")
        if wanted[0] < 0:
            raise ValueError(f"negative frame index {wanted[0]}")
        if wanted[-1] >= len(pts_table):
            raise VideoDecodeError(path, f"truncated: {len(pts_table)} frames, frame {wanted[-1]} was requested")
        index_of = {int(pts_table[i]): i for i in wanted}
        last_pts = int(pts_table[wanted[-1]])
        got: dict[int, np.ndarray] = {}
        n_decoded = 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if wanted[0] > 0:
                    container.seek(int(pts_table[wanted[0]]), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    n_decoded += 1
                    _progress()
                    if frame.pts in index_of:
                        if short_side and min(frame.width, frame.height) > short_side:
                            w, h = short_side_dims(frame.width, frame.height, short_side)
                            img = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                        else:
                            img = frame.to_ndarray(format="rgb24")
                        got[index_of[frame.pts]] = rotate_frame(img, getattr(frame, "rotation", 0) or 0)
                    if frame.pts is not None and frame.pts >= last_pts:
                        break
        except Exception as e:
            raise VideoDecodeError(path, f"decoding failed after {n_decoded} frames: {type(e).__name__}: {e}") from None
        if len(got) < len(wanted):
            missing = [i for i in wanted if i not in got]
            raise VideoDecodeError(path, f"truncated: frame {missing[0]} could not be decoded")
        return np.stack([got[int(i)] for i in indices])

    def iter_square(self, path, sizes: Sequence[int], keep: Sequence[int] | None = None):
        """Decode ``path`` once, front to back (decoder threads on), and yield ``(index, [frame per size])``
        for the frames in ``keep`` (all when None). Each frame is scaled by the decoder's scaler (libswscale,
        area filter) so that its short side is S, then centre-cropped to a uint8 ``(S, S, 3)``: no
        full-resolution RGB array is ever made, and one frame is in memory at a time, whatever the video's
        length or resolution. With no sizes, frames are decoded and checked but not converted."""
        import av

        path = Path(path)
        pts_table = self._table(path)[0]
        index_of = {int(p): i for i, p in enumerate(pts_table)}
        wanted = set(range(len(pts_table))) if keep is None else {int(i) for i in keep}
        if not wanted:
            return
        if max(wanted) >= len(pts_table) or min(wanted) < 0:
            raise VideoDecodeError(path, f"frame {max(wanted)} requested, the video has {len(pts_table)}")
        last, n_decoded, n_given = max(wanted), 0, 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    n_decoded += 1
                    _progress()
                    i = index_of.get(frame.pts)
                    if i is None or i not in wanted:
                        continue
                    rotation = getattr(frame, "rotation", 0) or 0
                    out = []
                    for size in sizes:
                        w, h = short_side_dims(frame.width, frame.height, size)
                        img = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                        out.append(center_crop(rotate_frame(img, rotation), size))
                    n_given += 1
                    yield i, out
                    if i >= last:
                        break
        except VideoDecodeError:
            raise
        except Exception as e:
            raise VideoDecodeError(path, f"decoding failed after {n_decoded} frames: {type(e).__name__}: {e}") from None
        if n_given < len(wanted):
            raise VideoDecodeError(path, f"truncated: {n_given} of {len(wanted)} frames could be decoded")


class DecordReader:
    name = "decord"

    def _open(self, path: Path):
        import decord

        _check_file(path)
        try:
            return decord.VideoReader(str(path), num_threads=1)
        except Exception as e:
            raise VideoDecodeError(path, f"cannot open: {e}") from None

    def info(self, path) -> VideoInfo:
        path = Path(path)
        vr = self._open(path)
        h, w = vr[0].shape[:2]
        return VideoInfo(len(vr), float(vr.get_avg_fps()), w, h)

    def read(self, path, indices, short_side: int | None = None) -> np.ndarray:  # at source size
        path = Path(path)
        vr = self._open(path)
        if max(indices) >= len(vr):
            raise VideoDecodeError(path, f"truncated: {len(vr)} frames, frame {max(indices)} was requested")
        try:
            return vr.get_batch(list(indices)).asnumpy()
        except Exception as e:
            raise VideoDecodeError(path, f"decoding failed: {e}") from None


class TorchCodecReader:
    name = "torchcodec"

    def _open(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        _check_file(path)
        try:
            return VideoDecoder(str(path), dimension_order="NHWC")
        except Exception as e:
            raise VideoDecodeError(path, f"cannot open: {e}") from None

    def info(self, path) -> VideoInfo:
        path = Path(path)
        dec = self._open(path)
        md = dec.metadata
        return VideoInfo(int(md.num_frames), float(md.average_fps or 0), int(md.width), int(md.height))

    def read(self, path, indices, short_side: int | None = None) -> np.ndarray:  # at source size
        path = Path(path)
        dec = self._open(path)
        try:
            return dec.get_frames_at(indices=list(indices)).data.numpy()
        except Exception as e:
            raise VideoDecodeError(path, f"decoding failed: {e}") from None


class FrameFolderReader:
    """A directory of images, one per frame, in name order (``img_00001.jpg`` ...)."""

    name = "frames"

    def _frames(self, path: Path) -> list[Path]:
        if not path.is_dir():
            raise VideoDecodeError(path, "frame folder not found")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VideoDecodeError(path, "frame folder holds no images")
        return files

    def info(self, path) -> VideoInfo:
        from PIL import Image

        files = self._frames(Path(path))
        try:
            with Image.open(files[0]) as im:
                w, h = im.size
        except Exception as e:
            raise VideoDecodeError(files[0], f"unreadable image: {e}") from None
        return VideoInfo(len(files), 0.0, w, h)

    def read(self, path, indices, short_side: int | None = None) -> np.ndarray:  # at source size
        from PIL import Image

        files = self._frames(Path(path))
        out = []
        for i in indices:
            if i >= len(files):
                raise VideoDecodeError(path, f"frame {i} requested, folder has {len(files)}")
            try:
                with Image.open(files[i]) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except Exception as e:
                raise VideoDecodeError(files[i], f"unreadable image: {e}") from None
        return np.stack(out)


def iter_square_frames(reader, path, sizes: Sequence[int], keep: Sequence[int] | None = None, chunk: int = 16):
    """``(index, [uint8 (S, S, 3) per size])`` for the frames of ``path`` in ``keep`` (all when None), short
    side resized to S and centre-cropped, in bounded memory. PyAV scales inside its decoder; other readers
    read ``chunk`` frames at a time and resize with torchvision."""
    if hasattr(reader, "iter_square"):
        yield from reader.iter_square(path, sizes, keep)
        return
    import torch
    from torchvision.transforms import v2

    resizers = [v2.Compose([v2.Resize(s, antialias=True), v2.CenterCrop(s)]) for s in sizes]
    indices = list(range(reader.info(path).num_frames)) if keep is None else [int(i) for i in keep]
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        frames = torch.from_numpy(reader.read(path, part)).permute(0, 3, 1, 2)  # (k, 3, H, W)
        per_size = [r(frames).permute(0, 2, 3, 1).numpy() for r in resizers]  # each (k, S, S, 3)
        for k, i in enumerate(part):
            yield i, [p[k] for p in per_size]


_READERS = {"pyav": PyAVReader, "decord": DecordReader, "torchcodec": TorchCodecReader, "frames": FrameFolderReader}
_MODULES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec"}


def available_backends() -> list[str]:
    return [b for b, mod in _MODULES.items() if importlib.util.find_spec(mod) is not None]


def get_reader(backend: str):
    """Reader for a back-end name; a missing optional back-end is a clear error, not an ImportError."""
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r} (known: {', '.join(_READERS)})")
    module = _MODULES.get(backend)
    if module and importlib.util.find_spec(module) is None:
        from ..errors import ConfigError

        raise ConfigError("data.backend", f"{backend} is not installed (pip install 'dtgnet[{backend}]')")
    return _READERS[backend]()
