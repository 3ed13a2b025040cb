"""Clip-read time per decoding back-end.

    python benchmarks/read_clips.py DIR_OF_VIDEOS [--repeats 20]

For every video in DIR: mean and median time to read a 16-frame contiguous clip at a random position and
an 8-segment TSN sample, with each installed back-end (pyav always; decord and torchcodec when installed).
A fresh reader per read, as a DataLoader worker sees a new video each time.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dtgnet.data.sampling import clip_indices, tsn_indices
from dtgnet.data.video import available_backends, get_reader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", help="directory of video files")
    ap.add_argument("--repeats", type=int, default=20, help="reads per video, sampler and back-end")
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(p for p in Path(args.videos).iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm"))
    print(f"{'video':28s} {'backend':11s} {'frames':>6s} {'size':>10s} {'clip16 ms':>10s} {'tsn8 ms':>9s}")
    for path in files:
        for backend in available_backends():
            info = get_reader(backend).info(path)
            rng = np.random.default_rng(0)
            times = {"clip": [], "tsn": []}
            for _ in range(args.repeats):
                for kind, idx in (("clip", clip_indices(info.num_frames, 16, 1, rng)),
                                  ("tsn", tsn_indices(info.num_frames, 8, rng))):
                    reader = get_reader(backend)
                    t = time.perf_counter()
                    reader.read(path, idx)
                    times[kind].append(1000 * (time.perf_counter() - t))
            print(f"{path.name:28s} {backend:11s} {info.num_frames:6d} {info.width:>5d}x{info.height:<4d} "
                  f"{statistics.median(times['clip']):10.1f} {statistics.median(times['tsn']):9.1f}")


if __name__ == "__main__":
    main()
