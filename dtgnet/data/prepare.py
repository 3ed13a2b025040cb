"""`dtgnet data prepare`: decode every video once into a resized uint8 memory map.

Layout: ``DIR/frames.npy`` (all kept frames, ``(N, S, S, 3)`` uint8, short side resized to S by the
decoder's scaler, then centre-cropped) and ``DIR/index.json`` (per video: path relative to the data root,
first row, kept frame count, the source's size and modification time, the stride kept and the source's frame
count). Reading a clip is then a slice of a memory map: no decoding, no seeking. Source frame numbers map to
the nearest kept frame, so a subsampled copy (``--fps`` / ``--stride``) samples like the original.
Disk cost: ``S * S * 3`` bytes per kept frame, e.g. 4.4 GB per hour of 25 fps video at S = 128, 1.4 GB at
8 fps. Decoding is parallel, resumable and shardable over torchrun ranks (:mod:`dtgnet.data.bulk`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..dist import default_workers
from ..errors import DataError, VideoDecodeError
from ..io import NpyRows, RowFile, write_text_atomic
from .bulk import Journal, decode_all, join_shards, journalled_bad, npy_header, plan_key, plan_videos
from .lists import VideoList

RESIZE = "decoder-area-short-side,center-crop/2"


def prepared_size(crop: int) -> int:
    """The side a prepared copy keeps for a student crop of ``crop`` pixels: 8/7 of it (room for the random
    crop), rounded up to an even number."""
    return (crop * 8 // 7 + 1) // 2 * 2


def prepare(lists: list[VideoList], reader, out_dir, size: int, progress: bool = True, stride: int = 1,
            fps: float = 0.0, workers: int | None = None) -> dict:
    """Decode the (deduplicated) videos of ``lists`` into ``out_dir``; unreadable ones are listed, not stored.
    ``stride`` / ``fps``: keep every stride-th frame, or the stride closest to ``fps`` frames per second."""
    shard = join_shards()
    workers = default_workers() if workers is None else workers
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = lists[0].root
    names = list(dict.fromkeys(e.path for vl in lists for e in vl.good))
    videos, bad = plan_videos([root / n for n in names], names, reader, stride, fps, workers, shard, progress,
                              "prepare")
    total = sum(v.kept for v in videos)
    header = npy_header((total, size, size, 3), np.uint8)
    target, tmp = out_dir / "frames.npy", out_dir / "frames.npy.tmp"
    if shard.rank == 0:
        (out_dir / "index.json").unlink(missing_ok=True)  # an older index never describes the new frames
    journal = Journal(out_dir / "frames.npy.progress", plan_key(videos, root, {"size": size, "resize": RESIZE}),
                      shard, resumable=tmp.is_file())
    frame_bytes = size * size * 3
    journal.create_outputs([(tmp, len(header) + total * frame_bytes)])
    out = RowFile(tmp, len(header) + total * frame_bytes, create=False)
    try:
        out.write(0, header)

        def store(video, pos: int, chunk: list[np.ndarray]) -> None:
            out.write(len(header) + (video.row + pos) * frame_bytes, chunk[0])  # (k, S, S, 3) rows in place

        decode_all(videos, root, reader, [size], workers, store, progress, f"prepare {size}px", journal, out.sync)
    finally:
        out.close()
        journal.close()
    shard.barrier()
    if shard.rank:
        return {"videos": 0, "frames": 0, "bytes": 0, "bad": []}
    bad += journalled_bad(journal, videos)
    failed = {b["path"] for b in bad}
    entries = {}
    for v in videos:
        if v.path not in failed:
            st = (root / v.path).stat()
            entries[v.path] = [v.row, v.kept, st.st_size, st.st_mtime_ns, v.stride, v.source_frames]
    os.replace(tmp, target)
    write_text_atomic(out_dir / "index.json", json.dumps({"size": size, "root": str(root), "resize": RESIZE,
                                                          "entries": entries, "bad": bad}))
    journal.remove()
    return {"videos": len(entries), "frames": sum(e[1] for e in entries.values()),
            "bytes": target.stat().st_size, "bad": bad}


class PreparedReader:
    """Reads frames of videos under ``root`` from a directory written by :func:`prepare`."""

    name = "prepared"

    def __init__(self, prepared_dir, root):
        self.dir, self.root = Path(prepared_dir), Path(root)
        index_path = self.dir / "index.json"
        if not index_path.is_file() or not (self.dir / "frames.npy").is_file():
            raise DataError(f"{self.dir}: not a prepared dataset (run `dtgnet data prepare`)")
        index = json.loads(index_path.read_text())
        self.size, self.entries = index["size"], index["entries"]
        self._frames = NpyRows(self.dir / "frames.npy", "prepare again")

    def _entry(self, path) -> tuple[int, int, int, int]:
        """(first row, kept frames, stride, source frames) of a video."""
        rel = os.path.relpath(path, self.root)
        if rel not in self.entries:
            raise VideoDecodeError(path, f"not in the prepared dataset {self.dir}")
        row, kept, size, mtime, *subsampled = self.entries[rel]
        try:
            st = os.stat(path)
        except FileNotFoundError:  # the frames are here: a source moved away does not stop training
            st = None
        if st is not None and (st.st_size, st.st_mtime_ns) != (size, mtime):
            raise DataError(f"{path}: changed since `dtgnet data prepare` wrote {self.dir}; prepare again")
        stride, source = subsampled or (1, kept)
        return row, kept, stride, source

    def info(self, path):
        from .video import VideoInfo

        return VideoInfo(self._entry(path)[3], 0.0, self.size, self.size)

    def read(self, path, indices, short_side: int | None = None) -> np.ndarray:
        """Frames by source frame number; a subsampled copy gives the nearest kept frame. The stored size
        is already small: ``short_side`` changes nothing."""
        row, kept, stride, source = self._entry(path)
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.max() >= source:
            raise VideoDecodeError(path, f"frame {idx.max()} requested, the video has {source}")
        rows = row + np.minimum(np.rint(idx / stride).astype(np.int64), kept - 1)
        return self._frames.take(rows)  # (T, S, S, 3)


def reader_for(data_cfg):
    """The frame reader a :class:`~dtgnet.config.DataConfig` asks for."""
    from .video import get_reader

    if data_cfg.prepared:
        return PreparedReader(data_cfg.prepared, data_cfg.root)
    return get_reader(data_cfg.reader)

