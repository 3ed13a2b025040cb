"""Resident memory of reading a disk teacher cache (``run.teacher_cache_dir``) at Kinetics-like size.

    python benchmarks/cache_memory.py [--videos 8000] [--frames 75] [--dim 1280] [--dir DIR]

Writes one cache table of ``--videos`` x ``--frames`` float16 rows of ``--dim`` (8,000 x 75 x 1280: 1.5 GB,
the size of 8,000 ten-second clips cached at 7.5 fps by EfficientNet-B0), then, each in its own process, looks
up an 8-frame clip of every video through :class:`~dtgnet.teacher_cache.TeacherCache` the way training does,
reading the table (a) through a memory map, (b) with ``pread`` as ``load_cache`` does, plus (c) a process
that only imports, and prints each one's time and peak RSS.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_table(path: Path, videos: int, frames: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    table = np.lib.format.open_memmap(path, "w+", np.float16, (videos * frames, dim))
    for i in range(0, videos * frames, 16384):
        n = min(16384, videos * frames - i)
        table[i:i + n] = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    table.flush()


def look_up_every_video(path: Path, videos: int, frames: int, how: str) -> None:
    import torch

    from dtgnet.io import NpyRows
    from dtgnet.teachers.cache import TeacherCache, _VideoRows

    if how == "mmap":
        table = np.load(path, mmap_mode="r")
        per_video = [table[i * frames:(i + 1) * frames] for i in range(videos)]
    elif how == "pread":
        rows = NpyRows(path, "write it again")
        per_video = [_VideoRows(rows, i * frames, frames) for i in range(videos)]
    t0 = time.perf_counter()
    if how != "imports":
        cache, rng = TeacherCache(per_video, rows_dim(path)), np.random.default_rng(1)
        for first in range(0, videos, 16):  # batches of 16 videos, an 8-frame clip from each
            index = torch.arange(first, min(first + 16, videos))
            start = rng.integers(0, frames - 8, len(index))
            cache.lookup(index, torch.from_numpy(start[:, None] + np.arange(8)[None]))
    print(f"{how:8s} {time.perf_counter() - t0:6.1f} s  peak RSS {peak_rss_mib():6.0f} MiB", flush=True)


def peak_rss_mib() -> float:
    """This process's own peak (VmHWM; getrusage's would include the parent's at fork)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def rows_dim(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8000)
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--dir", help="where to write the table (default: a temporary directory, removed after)")
    ap.add_argument("--only", choices=("imports", "mmap", "pread"), help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args()
    if args.only:
        return look_up_every_video(Path(args.dir) / "cache.npy", args.videos, args.frames, args.only)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        path = Path(work) / "cache.npy"
        t0 = time.perf_counter()
        write_table(path, args.videos, args.frames, args.dim)
        print(f"table: {args.videos} videos x {args.frames} rows x {args.dim} float16, "
              f"{path.stat().st_size / 2**30:.2f} GiB, written in {time.perf_counter() - t0:.0f} s", flush=True)
        for how in ("imports", "mmap", "pread"):
            subprocess.run([sys.executable, __file__, "--only", how, "--dir", work, "--videos", str(args.videos),
                            "--frames", str(args.frames)], check=True)


if __name__ == "__main__":
    main()
