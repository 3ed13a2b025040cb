"""What a video teacher costs: milliseconds per view (one clip) of each video teacher at its own input, beside
the image teachers' per-view cost (every frame of the view), on this machine.

    python benchmarks/video_teachers.py [--frames 8] [--batch 4] [--repeats 3] [--json F]

Weights are random (the cost does not depend on them; no download happens): a TSN-R18 dtgnet student file
(``student``, at 8 frames of 112²), torchvision R3D-18 (16 frames of 112²) and S3D (16 of 224²) through the
``torchvision_video`` source (their files placed in a temporary torch hub cache), a VideoMAE-Base
(``hf_video``, 16 of 224², a local folder), and the bundled EfficientNet-Lite0 image teacher on the view's
``--frames`` frames at 112² and 224². Views are ``--frames`` frames; each teacher resamples them to its own count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def per_view_ms(teacher, views: torch.Tensor, repeats: int) -> float:
    teacher(views)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        teacher(views)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / views.shape[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torchvision.models as tvm
    import transformers

    from dtgnet.config import Config, TeacherConfig, to_dict
    from dtgnet.students import build_student, save_student_safetensors
    from dtgnet.teachers import build_teacher

    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        os.environ["TORCH_HOME"] = str(work)
        (work / "hub" / "checkpoints").mkdir(parents=True)
        for name in ("R3D_18_Weights.KINETICS400_V1", "S3D_Weights.KINETICS400_V1"):
            w = tvm.get_weight(name)
            builder = "r3d_18" if name.startswith("R3D") else "s3d"
            torch.save(tvm.get_model(builder).state_dict(), work / "hub" / "checkpoints" / w.url.rsplit("/", 1)[1])
        cfg = Config()
        cfg.student.arch, cfg.data.frames, cfg.data.size = "tsn_r18", 8, 112
        save_student_safetensors(build_student(cfg, {}), work / "student.safetensors",
                                 {"config": to_dict(cfg), "mode": "pretrain", "teacher_heads": {}, "self_head": True})
        transformers.VideoMAEModel(transformers.VideoMAEConfig()).save_pretrained(work / "videomae")
        teachers = {
            "student TSN-R18 (8 x 112²)": TeacherConfig("v", "student", str(work / "student.safetensors")),
            "torchvision_video R3D-18 (16 x 112²)": TeacherConfig("v", "torchvision_video",
                                                                 "R3D_18_Weights.KINETICS400_V1", input_size=112),
            "torchvision_video S3D (16 x 224²)": TeacherConfig("v", "torchvision_video", "S3D_Weights.KINETICS400_V1"),
            "hf_video VideoMAE-B (16 x 224²)": TeacherConfig("v", "hf_video", model=str(work / "videomae")),
            f"image EfficientNet-Lite0 ({args.frames} x 112²)": TeacherConfig("i", input_size=112),
            f"image EfficientNet-Lite0 ({args.frames} x 224²)": TeacherConfig("i", input_size=224),
        }
        views = torch.rand(args.batch, args.frames, 3, 224, 224)
        for label, tc in teachers.items():
            teacher = build_teacher(tc)
            results[label] = round(per_view_ms(teacher, views, args.repeats), 1)
            print(f"{label:42s} {results[label]:8.1f} ms per view", flush=True)
    report = {"settings": vars(args), "machine": platform.platform(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "ms_per_view": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
