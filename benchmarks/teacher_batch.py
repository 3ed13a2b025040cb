"""Teacher throughput on a CPU against its batch size, as the teacher cache runs it.

    python benchmarks/teacher_batch.py [--sizes 64 112 224] [--frames 256]

For each input size, EfficientNet-Lite0 embeds the same random frames in one batch of ``--frames``, in the
batches the cache uses (:func:`dtgnet.teacher_cache.teacher_batch`), and in those batches with channels-last
input; it prints frames per second and whether the embeddings equal the one-batch ones (exactly, and as the
cache stores them, in float16).
"""
from __future__ import annotations

import argparse
import time

import torch

from dtgnet.config import TeacherConfig
from dtgnet.teachers import build_teacher
from dtgnet.teachers.cache import teacher_batch


def embed(teacher, frames: torch.Tensor, batch: int, channels_last: bool = False) -> tuple[torch.Tensor, float]:
    """(embeddings, frames per second) of ``frames`` in batches of ``batch``, after one warm-up pass."""
    def run():
        parts = []
        for start in range(0, len(frames), batch):
            x = frames[start:start + batch]
            parts.append(teacher.embed_frames(x.contiguous(memory_format=torch.channels_last) if channels_last else x))
        return torch.cat(parts)

    with torch.inference_mode():
        run()
        t = time.perf_counter()
        out = run()
    return out, len(frames) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    ap.add_argument("--frames", type=int, default=256)
    args = ap.parse_args()
    print(f"EfficientNet-Lite0, {torch.get_num_threads()} threads, {args.frames} frames per size")
    print(f"{'size':>5} {'one batch':>14} {'cache batch':>20} {'channels-last':>16}  same embeddings (exact / float16)")
    for size in args.sizes:
        teacher = build_teacher(TeacherConfig("imagenet", "efficientnet_lite0", input_size=size))
        frames = torch.rand(args.frames, 3, size, size, generator=torch.Generator().manual_seed(0))
        batch = teacher_batch(teacher, "cpu")
        whole, rate_whole = embed(teacher, frames, args.frames)
        cached, rate_cached = embed(teacher, frames, batch)
        last, rate_last = embed(teacher, frames, batch, channels_last=True)
        same = (f"cache {torch.equal(cached, whole)} / {torch.equal(cached.half(), whole.half())}, channels-last "
                f"{torch.equal(last, whole)} / {(last.half() == whole.half()).float().mean().item():.1%} of values")
        print(f"{size:>5} {rate_whole:>8.0f} img/s {rate_cached:>7.0f} img/s (b={batch:<3d}) {rate_last:>10.0f} img/s  "
              f"{same}")


if __name__ == "__main__":
    main()
