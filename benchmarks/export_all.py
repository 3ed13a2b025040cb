"""`dtgnet export` for every registered student: ONNX and torch.export, the largest difference to PyTorch,
the dynamic axes each keeps, the time and the file size.

    python benchmarks/export_all.py [--archs tsn_r18 r3d_18 ...] [--frames 8] [--size 112] [--out DIR] [--json F]

Each student is built with a classifier (10 classes) and one teacher head (64 wide), at ``--frames`` x
``--size`` (MViT-v2-S at the next multiple of 32, which its blocks need), with its initial weights (the
check compares arithmetic, which does not depend on them), saved as ``student.safetensors`` and exported through
:func:`dtgnet.inference.export.export_student`, which runs the written file on random clips of two batch sizes
(and another clip length where the frame axis is dynamic) and compares every output with PyTorch.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from dtgnet.config import load_config, to_dict
from dtgnet.errors import DtgError
from dtgnet.inference.export import export_student
from dtgnet.registry import STUDENTS
from dtgnet.students import build_student, save_student_safetensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(STUDENTS.names()))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--out", default="export_work")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    rows = {}
    for arch in args.archs:
        size = -(-args.size // 32) * 32 if arch == "mvit_v2_s" else args.size
        cfg = load_config(None, [f"student.arch={arch}", f"data.frames={args.frames}", f"data.size={size}",
                                 "student.patch_size=16"], check_paths=False)
        ckpt = work / f"{arch}.safetensors"
        save_student_safetensors(build_student(cfg, {"teacher": 64}, 10), ckpt,
                                 {"config": to_dict(cfg), "mode": "joint", "teacher_heads": {"teacher": 64},
                                  "num_classes": 10, "classes": [str(c) for c in range(10)], "self_head": True})
        for fmt in ("onnx", "pt2"):
            out = work / f"{arch}.{fmt}"
            started = time.perf_counter()
            try:
                r = export_student(ckpt, fmt, out)
                row = {"max_abs_diff": r["max_abs_diff"], "dynamic": r["dynamic"], "mib": out.stat().st_size / 2**20}
            except DtgError as e:
                row = {"error": str(e)}
            row["seconds"] = time.perf_counter() - started
            rows[f"{arch} {fmt}"] = {"frames": args.frames, "size": size, **row}
            what = (f"max abs diff {row['max_abs_diff']:.2e}, dynamic {'+'.join(row['dynamic'])}, {row['mib']:.0f} MiB"
                    if "error" not in row else row["error"])
            print(f"{arch:12s} {fmt:5s} {args.frames}x{size}: {what} ({row['seconds']:.0f} s)", flush=True)
            out.unlink(missing_ok=True)
    print(json.dumps(rows, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
