"""Peak memory and speed of `dtgnet data prepare` and `dtgnet teacher cache` on long HD video.

    python benchmarks/data_path.py [--seconds 40] [--width 1280 --height 720] [--videos 1] [--workers N]
                                   [--size 64] [--teacher-size 64] [--out DIR]

Generates ``--videos`` clips of ``--seconds`` at the given resolution (25 fps), then runs each stage as its
own process under ``/usr/bin/time -v`` and prints wall time, frames per second and peak resident memory,
next to the peak of the same interpreter that only imports dtgnet and torch (the baseline every stage
pays). Pass ``--pythonpath DIR`` to measure another checkout of the project the same way.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dtgnet.data.synth import write_pattern_video


def measure(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stderr) of one command run under /usr/bin/time -v."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    return wall, peak, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: the cores available)")
    ap.add_argument("--size", type=int, default=64, help="prepared frame side")
    ap.add_argument("--teacher-size", type=int, default=64, help="teacher input size for the cache")
    ap.add_argument("--out", default="", help="working directory (default: a temporary one)")
    ap.add_argument("--pythonpath", default="", help="measure the dtgnet found here instead of the installed one")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="dtgnet-datapath-"))
    data = work / "data"
    names = [f"v{i}.mp4" for i in range(args.videos)]
    for name in names:
        if not (data / name).exists():
            write_pattern_video(data / name, args.seconds, args.width, args.height)
    (data / "train.txt").write_text("".join(f"{n} 0\n" for n in names))
    (data / "classes.txt").write_text("a\n")
    frames = round(args.seconds * 25) * args.videos
    env = {**os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {})}
    common = [f"data.root={data}", f"data.train_list={data / 'train.txt'}", f"data.classes={data / 'classes.txt'}",
              f"data.size={args.size}", f"teachers.0.input_size={args.teacher_size}"]
    workers = [] if args.workers < 0 or args.pythonpath else ["--workers", str(args.workers)]
    dtgnet = [sys.executable, "-m", "dtgnet"]
    _, base, _ = measure([sys.executable, "-c", "import torch, dtgnet.cli, dtgnet.teacher_cache"], env)
    print(f"{args.videos} x {args.seconds:g} s at {args.width}x{args.height}, 25 fps ({frames} frames); "
          f"baseline interpreter {base:.0f} MiB")
    for stage, cmd in (("prepare", [*dtgnet, "data", "prepare", *common, "--out", str(work / "prep"),
                                    "--size", str(args.size), *workers]),
                       ("teacher cache", [*dtgnet, "teacher", "cache", *common, "--out", str(work / "cache"),
                                          *workers])):
        wall, peak, _ = measure(cmd, env)
        print(f"{stage:14s} {wall:6.1f} s  {frames / wall:7.0f} frames/s  peak {peak:6.0f} MiB "
              f"({peak - base:+.0f} MiB over the baseline)")


if __name__ == "__main__":
    main()
