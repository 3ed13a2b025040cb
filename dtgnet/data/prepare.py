"""`dtgnet data prepare`: decode every video once into a resized uint8 memory map.

Layout: ``DIR/frames.npy`` (all frames, ``(N, S, S, 3)`` uint8, short side resized to S then centre-cropped)
and ``DIR/index.json`` (per video: path relative to the data root, first row, frame count, and the source's
size and modification time). Reading a clip is then a slice of a memory map: no decoding, no seeking.
Disk cost: ``S * S * 3`` bytes per frame, e.g. 4.4 GB per hour of 25 fps video at S = 128.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from torchvision.transforms import v2

from ..errors import DataError, VideoDecodeError
from ..storage import reserved_file, write_text_atomic
from .lists import VideoList
from .transforms import to_tensor


def prepare(lists: list[VideoList], reader, out_dir, size: int, progress: bool = True) -> dict:
    """Decode the (deduplicated) videos of ``lists`` into ``out_dir``; unreadable ones are listed, not stored."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = lists[0].root
    seen, todo = set(), []
    for vl in lists:
        for e in vl.good:
            if e.path not in seen:
                seen.add(e.path)
                todo.append(e.path)
    counts, bad = {}, []
    for rel in tqdm(todo, desc="count frames", disable=not progress, unit="video"):
        try:
            counts[rel] = reader.info(root / rel).num_frames
        except VideoDecodeError as e:
            bad.append({"path": rel, "reason": e.reason})
    total = sum(counts.values())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (total, size, size, 3)})
    resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    entries, row = {}, 0
    (out_dir / "index.json").unlink(missing_ok=True)  # an older index never describes the new frames
    with reserved_file(out_dir / "frames.npy", len(header.getvalue()) + total * size * size * 3) as fh:
        fh.write(header.getvalue())
        for rel, n in tqdm(list(counts.items()), desc="prepare", disable=not progress, unit="video"):
            try:
                clip = resize(to_tensor(reader.read(root / rel, range(n))))  # (n, 3, S, S) uint8
            except VideoDecodeError as e:
                bad.append({"path": rel, "reason": e.reason})
                continue
            fh.write(clip.permute(0, 2, 3, 1).contiguous().numpy().tobytes())  # rows in order, (n, S, S, 3)
            st = (root / rel).stat()
            entries[rel] = [row, n, st.st_size, st.st_mtime_ns]
            row += n
    index = {"size": size, "root": str(root), "entries": entries, "bad": bad}
    write_text_atomic(out_dir / "index.json", json.dumps(index))
    return {"videos": len(entries), "frames": row, "bytes": (out_dir / "frames.npy").stat().st_size, "bad": bad}


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
        self._frames = None  # opened lazily, so DataLoader workers each map the file themselves

    def _entry(self, path) -> list:
        rel = os.path.relpath(path, self.root)
        if rel not in self.entries:
            raise VideoDecodeError(path, f"not in the prepared dataset {self.dir}")
        row, n, size, mtime = self.entries[rel]
        p = Path(path)
        if p.exists() and (p.stat().st_size, p.stat().st_mtime_ns) != (size, mtime):
            raise DataError(f"{path}: changed since `dtgnet data prepare` wrote {self.dir}; prepare again")
        return self.entries[rel]

    def info(self, path):
        from .video import VideoInfo

        return VideoInfo(self._entry(path)[1], 0.0, self.size, self.size)

    def read(self, path, indices) -> np.ndarray:
        row, n = self._entry(path)[:2]
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.max() >= n:
            raise VideoDecodeError(path, f"frame {idx.max()} requested, the prepared copy has {n}")
        if self._frames is None:
            self._frames = np.load(self.dir / "frames.npy", mmap_mode="r")
        return np.ascontiguousarray(self._frames[row + idx])  # (T, S, S, 3)


def reader_for(data_cfg):
    """The frame reader a :class:`~dtgnet.config.DataConfig` asks for."""
    from .video import get_reader

    if data_cfg.prepared:
        return PreparedReader(data_cfg.prepared, data_cfg.root)
    return get_reader(data_cfg.reader)

