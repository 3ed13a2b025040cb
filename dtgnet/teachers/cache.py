"""Teacher-feature cache: every frame of every training video embedded once by each frozen teacher.

Training then looks up ``mean_t cache[video, frame_t]`` for a view instead of running the teachers on it,
which removes the teachers' cost from every step. Cached teachers see the clean frame (short side scaled to
the teacher's own input size by the decoder, centre crop), decoded from the source video (never from a
smaller prepared copy), not the student's augmented view. Each video is decoded once for all teachers, and
frames from several videos fill each teacher batch (:mod:`dtgnet.data.bulk`: bounded memory, parallel
decoding, ``stride`` / ``fps`` subsampling with lookups snapped to the nearest cached frame).

In memory (``run.teacher_cache=true``) the cache is built when a run starts. On disk
(`dtgnet teacher cache -c CONFIG`, then ``run.teacher_cache_dir``) it is one float16 ``.npy`` per teacher,
read a clip's rows at a time (not memory-mapped: resident memory stays flat however much is read), plus
``<name>.json``: the video order, each video's first row, kept frame count and stride, and a key made of
the teacher's identity (source, weights, a hash of its parameters), its preprocessing, and every video's
path, size and modification time. A cache whose key no longer matches is refused, naming what
changed. Writing it resumes after an interruption and shards over torchrun ranks like `dtgnet data prepare`.

With ``run.token_cache_grid`` the cache also holds each image teacher's token map of every frame, pooled to a
small grid (``<name>.tokens<side>.npy``, the same format); a view's tokens are cut from it along the view's
crop box and flipped with it (:func:`cut_token_grid`), so a whole frame's grid stands in for the view's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.bulk import Journal, Video, decode_all, join_shards, npy_header, plan_key, plan_videos
from ..data.dataset import VideoDataset
from ..dist import Dist, default_workers
from ..errors import ConfigError, DtgError, VideoDecodeError
from ..io import NpyRows, RowFile, write_text_atomic
from ..registry import TEACHER_SOURCES
from .base import Teacher, build_teacher, in_student_order

PREPROCESSING = "decoder-area-short-side,center-crop,float[0,1],teacher-normalisation/2"
BATCH_FRAMES = 256
"""Frames gathered (from any videos) before the teachers run, and a teacher's batch on a GPU."""
CPU_BATCH_PIXELS = 3 * 2 ** 16
"""A teacher's batch on a CPU, in input pixels: a batch that stays in the processor's caches runs fastest
(EfficientNet-Lite0 on 2 cores, against 256-frame batches: 2.7x at 64 px with 48 frames, 2.3x at 112 px with
16, 2.9x at 224 px with 4; benchmarks/teacher_batch.py, which also finds its embeddings the same bit for
bit)."""


def teacher_batch(teacher: Teacher, device) -> int:
    """Frames per teacher batch when building a cache."""
    if torch.device(device).type != "cpu":
        return BATCH_FRAMES
    return max(1, min(BATCH_FRAMES, round(CPU_BATCH_PIXELS / teacher.input_size ** 2)))


class StaleCacheError(DtgError):
    pass


class TeacherCache:
    """``per_video[i]``: ``(kept_i, D)`` float16 embeddings of video ``i`` (None if it was unreadable), of its
    frames ``0, stride_i, 2 stride_i, ...``: an array in memory, or a :class:`_VideoRows` on disk."""

    def __init__(self, per_video: list, embed_dim: int, strides: list[int] | None = None):
        self.per_video = per_video
        self.embed_dim = embed_dim
        self.strides = strides or [1] * len(per_video)

    @property
    def nbytes(self) -> int:
        """The float16 rows' size."""
        return sum(len(rows) for rows in self.per_video if rows is not None) * self.embed_dim * 2

    def _rows(self, i: int, frames: np.ndarray) -> np.ndarray:
        """``(T,)`` source frame indices of video ``i`` -> its ``(T, D)`` float16 rows, each frame snapped to the
        nearest cached one."""
        feats = self.per_video[i]
        if feats is None:
            raise VideoDecodeError(f"video #{i}", "not in the teacher cache (unreadable when it was built)")
        kept = np.minimum(np.rint(frames / self.strides[i]).astype(np.int64), len(feats) - 1)
        return feats[kept]

    def lookup(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``index`` ``(B,)`` video indices, ``frames`` ``(B, T)`` source frame indices -> ``(B, D)`` float32:
        the mean of the frames' embeddings."""
        return torch.stack([torch.from_numpy(self._rows(i, f).astype(np.float32)).mean(0)
                            for i, f in zip(index.tolist(), frames.numpy())])

    def lookup_frames(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """As :meth:`lookup`, every frame's embedding: ``(B, T, D)``."""
        return self.lookup_rows(index, frames).float()

    def lookup_rows(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """As :meth:`lookup_frames`, in the cache's float16: half the bytes to move to a GPU (token grids)."""
        return torch.from_numpy(np.stack([self._rows(i, f) for i, f in zip(index.tolist(), frames.numpy())]))


class DeviceRows:
    """A cache's rows held on a device (a GPU with room for them): a lookup gathers there, and only the indices
    cross from the host. The same rows as :meth:`TeacherCache.lookup_rows` (tested)."""

    def __init__(self, cache: TeacherCache, device):
        counts = [0 if rows is None else len(rows) for rows in cache.per_video]
        self.embed_dim = cache.embed_dim
        self.offsets = torch.tensor(np.cumsum([0] + counts[:-1]), dtype=torch.long)
        self.counts, self.strides = torch.tensor(counts), torch.tensor(cache.strides)
        kept = [rows[np.arange(len(rows))] for rows in cache.per_video if rows is not None and len(rows)]
        self.rows = torch.from_numpy(np.concatenate(kept)).to(device)  # (R, D) float16

    def lookup_rows(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``index`` ``(B,)``, ``frames`` ``(B, T)`` -> ``(B, T, D)`` float16 on the rows' device."""
        counts = self.counts[index]
        if (counts == 0).any():
            i = int(index[counts == 0][0])
            raise VideoDecodeError(f"video #{i}", "not in the teacher cache (unreadable when it was built)")
        kept = torch.minimum(torch.round(frames / self.strides[index, None]).long(), counts[:, None] - 1)
        return self.rows[(self.offsets[index, None] + kept).to(self.rows.device)]


class TokenGrid:
    """A teacher's token maps average-pooled to ``side x side`` and flattened, ``(N, C * side²)``: the rows of its
    token cache, built, written and read as the clip embeddings are."""

    def __init__(self, teacher: Teacher, side: int):
        self.teacher, self.side = teacher, side
        self.input_size, self.encoder, self.mean, self.std = teacher.input_size, teacher.encoder, teacher.mean, teacher.std
        self.token_dim = teacher.token_dim
        self.embed_dim = self.token_dim * side * side

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.teacher.token_maps(frames), self.side).flatten(1)  # (N, C * side²)


def token_grid_config(teacher_cfg, side: int):
    """The config naming a teacher's token cache (``<name>.tokens<side>``)."""
    return dataclasses.replace(teacher_cfg, name=f"{teacher_cfg.name}.tokens{side}")


def cut_token_grid(maps: torch.Tensor, geometry: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cached whole-frame token grids -> the tokens of each view's crop on the student's ``grid``.

    ``maps`` ``(N, C, s, s)``: the grid of each frame's centre square (what the cache's teacher saw: the short
    side, centred). ``geometry`` ``(N, 6)``: the view's crop box as fractions of the frame, the frame's width /
    height and its flip (:data:`~dtgnet.data.transforms.GEOMETRY`). The box is placed on the square (clamped to
    it: a wide frame's crop can reach past the square's sides), each student cell averages the bilinear samples
    of the map it covers (``torchvision.ops.roi_align``, pixel-aligned), and a mirrored view's grid is
    mirrored. Returns ``(N, C, h, w)``."""
    from torchvision.ops import roi_align

    s = maps.shape[-1]
    y0, x0, y1, x1, aspect, flipped = geometry.to(maps.device, maps.dtype).unbind(1)  # each (N,)
    fw, fh = aspect.clamp(min=1), (1 / aspect).clamp(min=1)  # the frame's width, height in square sides

    def on_square(v, extent):  # a fraction of the frame -> cells of the square's grid
        return ((v * extent - (extent - 1) / 2).clamp(0, 1) * s)

    left, top = on_square(x0, fw), on_square(y0, fh)
    # a crop wholly past the square's side keeps a sliver there: its cells read the square's edge, not zeros
    right, bottom = torch.maximum(on_square(x1, fw), left + 1e-3), torch.maximum(on_square(y1, fh), top + 1e-3)
    boxes = torch.stack([torch.arange(len(maps), dtype=maps.dtype, device=maps.device), left, top, right, bottom],
                        1)  # (N, 5): (frame, x1, y1, x2, y2) in cells
    cut = roi_align(maps, boxes, output_size=grid, spatial_scale=1.0, sampling_ratio=-1, aligned=True)  # (N, C, h, w)
    return torch.where(flipped.bool()[:, None, None, None], cut.flip(-1), cut)


def cached_tokens(cache: "TeacherCache", index: torch.Tensor, frames: torch.Tensor, geometry: torch.Tensor,
                  every: int, grid: tuple[int, int], dim: int, device=None) -> torch.Tensor:
    """A token cache's stand-in for :meth:`~dtgnet.teachers.base.Teacher.sequence_tokens`: the ``(B, T/every * h
    * w, C)`` tokens of frames ``0, every, ...`` of each view (``frames`` ``(B, T)``, ``geometry`` ``(B, 6)``), in
    the same order, cut on ``device`` (the rows travel there in float16)."""
    first = frames[:, ::every]  # (B, T')
    side = math.isqrt(cache.embed_dim // dim)
    rows = cache.lookup_rows(index, first).to(device).float()  # (B, T', C * s * s)
    maps = rows.flatten(0, 1).unflatten(1, (dim, side, side))  # (B * T', C, s, s)
    cut = cut_token_grid(maps, geometry.repeat_interleave(first.shape[1], 0), grid)  # (B * T', C, h, w)
    return in_student_order(cut, len(first))  # (B, T' * h * w, C)


def batch_shapes(n: int, full: int) -> list[int]:
    """Split ``n`` frames into batches of ``full`` and, for the rest, powers of two: a few fixed shapes, so the
    teachers' kernels (oneDNN primitives, cuDNN plans, compiled graphs) are built once, not per odd batch."""
    sizes = [full] * (n // full)
    rest = n % full
    sizes += [1 << b for b in range(rest.bit_length() - 1, -1, -1) if rest >> b & 1]
    return sizes


class _Embedder:
    """Gathers decoded chunks from any videos until a teacher batch is full, then runs every teacher on it
    (in batches of :func:`batch_shapes` of :func:`teacher_batch`) and hands each chunk's embeddings to ``write(teacher number, first
    row, (k, D) float16)``."""

    def __init__(self, teachers: list[Teacher], device, write: Callable[[int, int, np.ndarray], None]):
        self.teachers, self.device, self.write = teachers, device, write
        self.sizes = sorted({t.input_size for t in teachers})
        self.pending: list[tuple[int, list[np.ndarray]]] = []

    def add(self, video: Video, pos: int, chunk: list[np.ndarray]) -> None:
        self.pending.append((video.row + pos, chunk))
        if sum(len(c[0]) for _, c in self.pending) >= BATCH_FRAMES:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.pending:
            return
        lengths = [len(c[0]) for _, c in self.pending]
        for k, teacher in enumerate(self.teachers):
            s = self.sizes.index(teacher.input_size)
            frames = torch.from_numpy(np.concatenate([c[s] for _, c in self.pending]))  # (N, S, S, 3) uint8
            parts, start = [], 0
            for n in batch_shapes(len(frames), teacher_batch(teacher, self.device)):
                x = frames[start:start + n].to(self.device).permute(0, 3, 1, 2).float().div_(255)  # (n, 3, S, S)
                parts.append(teacher.embed_frames(x).half().cpu().numpy())  # (n, D)
                start += n
            emb = np.concatenate(parts)  # (N, D)
            for (row, _), start, n in zip(self.pending, np.cumsum([0] + lengths[:-1]), lengths):
                self.write(k, row, emb[start:start + n])
        self.pending = []


def _plan(dataset: VideoDataset, reader, stride: int, fps: float, workers: int, shard: Dist,
          progress: bool) -> tuple[list[Video], list[Video | None]]:
    """Readable videos (rows assigned) and, per dataset entry, its video or None."""
    names = [e.path for e in dataset.entries]
    videos, _ = plan_videos([dataset.videos.full_path(e) for e in dataset.entries], names, reader, stride, fps,
                            workers, shard, progress, "teacher cache")
    by_name = {v.path: v for v in videos}
    return videos, [by_name.get(n) for n in names]


def build_caches(teachers: list[Teacher], dataset: VideoDataset, device, reader=None, stride: int = 1,
                 fps: float = 0.0, workers: int = 0, progress: bool = True) -> list[TeacherCache]:
    """In-memory caches of ``dataset``'s videos for one run, from one decode of each video. ``reader``:
    the source videos' reader (default: the dataset's)."""
    reader = reader or dataset.reader
    videos, per_entry = _plan(dataset, reader, stride, fps, workers, Dist(), progress)
    total = sum(v.kept for v in videos)
    arrays = [np.zeros((total, t.embed_dim), np.float16) for t in teachers]

    def write(k: int, row: int, emb: np.ndarray) -> None:
        arrays[k][row:row + len(emb)] = emb

    embedder = _Embedder(teachers, device, write)
    failed = decode_all(videos, dataset.videos.root, reader, embedder.sizes, workers, embedder.add, progress,
                        "teacher cache", sync=embedder.flush)
    embedder.flush()
    failed_paths = {videos[k].path for k in failed}
    strides = [v.stride if v else 1 for v in per_entry]
    return [TeacherCache([arr[v.row:v.row + v.kept] if v and v.path not in failed_paths else None
                          for v in per_entry], t.embed_dim, strides) for t, arr in zip(teachers, arrays)]


# ------------------------------------------------------------------------------------------ on disk

def teacher_fingerprint(teacher: Teacher | TokenGrid, teacher_cfg) -> dict:
    """What the embeddings depend on: source, weights, parameter hash, input size, normalisation."""
    h = hashlib.sha256()
    state = teacher.encoder.state_dict() if hasattr(teacher.encoder, "state_dict") else {}
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    source = TEACHER_SOURCES.get(teacher_cfg.source, "teachers.source")
    if source.hashed_file:
        h.update(Path(teacher_cfg.weights).read_bytes())
    fp = {"name": teacher_cfg.name, "source": teacher_cfg.source, "weights": teacher_cfg.weights,
          "params_sha256": h.hexdigest()[:32], "input_size": teacher.input_size,
          "mean": teacher.mean.flatten().tolist(), "std": teacher.std.flatten().tolist(),
          "preprocessing": PREPROCESSING}
    fp.update({key: getattr(teacher_cfg, key) for key in source.describes})
    if isinstance(teacher, TokenGrid):
        fp["token_grid"] = teacher.side
    return fp


def data_fingerprint(dataset: VideoDataset) -> list[list]:
    """Per video: relative path, byte size, modification time (ns)."""
    rows = []
    for e in dataset.entries:
        p = dataset.videos.full_path(e)
        st = p.stat() if p.exists() else None
        rows.append([e.path, st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return rows


def write_caches(teachers: list[Teacher], teacher_cfgs, dataset: VideoDataset, out_dir, device, reader=None,
                 stride: int = 1, fps: float = 0.0, workers: int | None = None, progress: bool = True) -> list[Path]:
    """Embed every kept frame with every teacher (one decode per video) and write ``<name>.npy`` +
    ``<name>.json`` per teacher under ``out_dir``; resumable, and shared out over torchrun ranks."""
    shard = join_shards()
    workers = default_workers() if workers is None else workers
    reader = reader or dataset.reader
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos, per_entry = _plan(dataset, reader, stride, fps, workers, shard, progress)
    total = sum(v.kept for v in videos)
    fingerprints = [teacher_fingerprint(t, tc) for t, tc in zip(teachers, teacher_cfgs)]
    names = [tc.name for tc in teacher_cfgs]
    if shard.rank == 0:
        for name in names:  # an older index never describes the new embeddings
            (out_dir / f"{name}.json").unlink(missing_ok=True)
    tmps = [out_dir / f"{name}.npy.tmp" for name in names]
    journal = Journal(out_dir / ("+".join(names) + ".progress"),
                      plan_key(videos, dataset.videos.root, {"teachers": fingerprints}), shard,
                      resumable=all(t.is_file() for t in tmps))
    headers = [npy_header((total, t.embed_dim), np.float16) for t in teachers]
    sizes = [len(h) + total * t.embed_dim * 2 for h, t in zip(headers, teachers)]
    journal.create_outputs(list(zip(tmps, sizes)))
    files = [RowFile(tmp, nbytes, create=False) for tmp, nbytes in zip(tmps, sizes)]
    try:
        for f, h in zip(files, headers):
            f.write(0, h)

        def write(k: int, row: int, emb: np.ndarray) -> None:
            files[k].write(len(headers[k]) + row * emb.shape[1] * 2, np.ascontiguousarray(emb))

        embedder = _Embedder(teachers, device, write)

        def sync() -> None:  # embed what is waiting, then make it durable, before journalling its videos
            embedder.flush()
            for f in files:
                f.sync()

        decode_all(videos, dataset.videos.root, reader, embedder.sizes, workers, embedder.add, progress,
                   "teacher cache", journal=journal, sync=sync)
    finally:
        for f in files:
            f.close()
        journal.close()
    shard.barrier()
    paths = [out_dir / f"{name}.npy" for name in names]
    if shard.rank:
        return paths
    failed = {videos[k].path for k, reason in journal.read().items() if reason}
    rows = [v if v and v.path not in failed else None for v in per_entry]
    data = data_fingerprint(dataset)
    for tmp, path, name, fp, teacher in zip(tmps, paths, names, fingerprints, teachers):
        tmp.replace(path)
        index = {"teacher": fp, "data": data, "offsets": [v.row if v else 0 for v in rows],
                 "counts": [v.kept if v else 0 for v in rows], "strides": [v.stride if v else 1 for v in rows],
                 "embed_dim": teacher.embed_dim}
        write_text_atomic(out_dir / f"{name}.json", json.dumps(index))
    journal.remove()
    return paths


class _VideoRows:
    """One video's rows of a cache on disk; indexing reads the span of the rows asked for in one ``pread``."""

    def __init__(self, rows: NpyRows, first: int, count: int):
        self.rows, self.first, self.count = rows, first, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, kept: np.ndarray) -> np.ndarray:
        lo, hi = int(kept.min()), int(kept.max())
        return self.rows.span(self.first + lo, hi - lo + 1)[kept - lo]


def load_cache(teacher: Teacher, teacher_cfg, dataset: VideoDataset, cache_dir) -> TeacherCache:
    """Open a cache written by :func:`write_cache`; refuse it if the teacher or the data changed."""
    cache_dir = Path(cache_dir)
    meta_path, npy = cache_dir / f"{teacher_cfg.name}.json", cache_dir / f"{teacher_cfg.name}.npy"
    if not meta_path.is_file() or not npy.is_file():
        raise StaleCacheError(f"{cache_dir}: no cache for teacher {teacher_cfg.name!r}; "
                              f"write it with `dtgnet teacher cache -c CONFIG`")
    index = json.loads(meta_path.read_text())
    want = teacher_fingerprint(teacher, teacher_cfg)
    changed = [k for k in want if index["teacher"].get(k) != want[k]]
    if changed:
        raise StaleCacheError(f"{meta_path}: stale teacher cache, the teacher's {', '.join(changed)} changed; "
                              f"rebuild it with `dtgnet teacher cache -c CONFIG`")
    strides = index.get("strides", [1] * len(index["counts"]))
    rows = {path: (size, mtime, off, count, stride) for (path, size, mtime), off, count, stride
            in zip(index["data"], index["offsets"], index["counts"], strides)}
    table = NpyRows(npy, "rebuild it with `dtgnet teacher cache -c CONFIG`")
    per_video, per_stride = [], []
    for path, size, mtime in data_fingerprint(dataset):  # by path: a run may train on a subset of the videos
        if path not in rows:
            raise StaleCacheError(f"{meta_path}: stale teacher cache, {path} is not in it; "
                                  f"rebuild it with `dtgnet teacher cache -c CONFIG`")
        c_size, c_mtime, off, count, stride = rows[path]
        if (c_size, c_mtime) != (size, mtime):
            raise StaleCacheError(f"{meta_path}: stale teacher cache, {path} changed (size or modification "
                                  f"time); rebuild it with `dtgnet teacher cache -c CONFIG`")
        per_video.append(_VideoRows(table, off, count) if count else None)
        per_stride.append(stride)
    return TeacherCache(per_video, index["embed_dim"], per_stride)


def image_teachers(teacher_cfgs) -> list:
    """The teacher configs a per-frame cache holds: the image teachers (video teachers run online)."""
    return [tc for i, tc in enumerate(teacher_cfgs) if not TEACHER_SOURCES.get(tc.source, f"teachers.{i}.source").video]


def cache_teachers(teacher_cfgs, videos, frames: int, size: int, out_dir, device, reader, token_grid: int = 0,
                   **options) -> tuple[list[Path], int]:
    """``dtgnet teacher cache``: build each configured teacher and embed every frame of ``videos`` (a training
    :class:`~dtgnet.data.lists.VideoList`) read by ``reader``, which must be a source reader: the teachers see
    the original frames, never a prepared copy. Video teachers have no per-frame cache (they run online):
    they are left out. ``token_grid``: also each teacher's token map pooled to that side
    (:class:`TokenGrid`), in the same decode. Returns (one file per image teacher, in order, then one per token
    grid; the number of videos)."""
    teacher_cfgs = image_teachers(teacher_cfgs)
    if not teacher_cfgs:
        raise ConfigError("teachers", "every teacher is a video teacher: they embed each view as a whole clip, "
                                      "online, and have no per-frame cache")
    dataset = VideoDataset(videos, "single", frames, size, reader=reader)
    teachers = [build_teacher(tc, videos.classes).to(device) for tc in teacher_cfgs]
    if token_grid:
        teachers += [TokenGrid(t, token_grid) for t in teachers]
        teacher_cfgs = teacher_cfgs + [token_grid_config(tc, token_grid) for tc in teacher_cfgs]
    return write_caches(teachers, teacher_cfgs, dataset, out_dir, device, **options), len(dataset)
