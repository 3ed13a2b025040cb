"""`dtgnet predict` against `dtgnet eval` on the same videos, model and clip count: videos per second.

    python benchmarks/predict_speed.py [--videos 60] [--seconds 10] [--clips 2] [--out DIR] [--json F]

Writes ``--videos`` clips of ``--seconds`` at 320x240, 25 fps (:mod:`benchmarks.scale`'s generator: a window
panning over a real photograph) and a TSN-ResNet18 student with a classifier (8 segments at 112 px, untrained:
the cost does not depend on the weights). Times ``evaluate_model(..., "finetune")`` (eval's path: one process,
seeking reads) and the predict pass in-process with 0 decoding workers and with the default (every core),
each after a warm-up on 4 videos, and checks that predict's video-level answers are eval's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import CLASSES, write_clip  # noqa: E402

from dtgnet.config import load_config, to_dict  # noqa: E402
from dtgnet.evaluation import evaluate_model  # noqa: E402
from dtgnet.inference.predict import classifier_scorer  # noqa: E402
from dtgnet.inference.runner import Options, open_student, run_videos  # noqa: E402
from dtgnet.students import build_student, save_student_safetensors  # noqa: E402


def make_set(root: Path, n: int, seconds: float) -> Path:
    names = [f"class{i % CLASSES}/v{i:04d}.mp4" for i in range(n)]
    todo = [(str(root / name), seconds, i % CLASSES) for i, name in enumerate(names) if not (root / name).exists()]
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_clip, todo, chunksize=2))
    (root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(CLASSES)))
    (root / "test.txt").write_text("".join(f"{name} {i % CLASSES}\n" for i, name in enumerate(names)))
    (root / "warm.txt").write_text("".join(f"{name} {i % CLASSES}\n" for i, name in enumerate(names[:4])))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--out", default="predict_speed_work")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.out)
    root = make_set(work / "videos", args.videos, args.seconds)
    cfg = load_config(None, [f"data.root={root}", f"data.train_list={root}/test.txt", f"data.test_list={root}/test.txt",
                             f"data.classes={root}/classes.txt", "data.frames=8", "data.size=112",
                             f"data.eval_clips={args.clips}", "student.arch=tsn_r18"])
    ckpt = work / "student.safetensors"
    save_student_safetensors(build_student(cfg, {}, CLASSES, self_head=False), ckpt,
                             {"config": to_dict(cfg), "mode": "finetune", "teacher_heads": {}, "num_classes": CLASSES,
                              "classes": [f"class{c}" for c in range(CLASSES)], "self_head": False})
    student = open_student(ckpt, "cpu")
    scorer = classifier_scorer(student.meta, ckpt)
    paths = [root / line.split()[0] for line in (root / "test.txt").read_text().splitlines()]

    def eval_pass(list_name: str) -> dict:
        cfg.data.test_list = str(root / list_name)
        return evaluate_model(student.model, cfg, "finetune", "cpu")

    def predict_pass(videos, workers: int):
        opts = Options(clips=args.clips, workers=workers, progress=False, device="cpu")
        return run_videos(student, videos, opts, scorer.outputs)[0]

    figures = {"videos": args.videos, "seconds_each": args.seconds, "clips": args.clips, "size": "320x240",
               "model": "tsn_r18 8x112"}
    eval_pass("warm.txt")
    started = time.perf_counter()
    ref = eval_pass("test.txt")
    figures["eval_videos_s"] = args.videos / (time.perf_counter() - started)
    for workers, key in ((0, "predict_w0_videos_s"), (-1, "predict_videos_s")):
        predict_pass(paths[:4], workers)
        started = time.perf_counter()
        results = predict_pass(paths, workers)
        figures[key] = args.videos / (time.perf_counter() - started)
        agree = sum(int(r.outputs["probs"][0].argmax()) == p for r, p in zip(results, ref["predictions"]))
        figures[key.replace("videos_s", "agree")] = agree / args.videos
    figures["ratio_w0"] = figures["predict_w0_videos_s"] / figures["eval_videos_s"]
    figures["ratio"] = figures["predict_videos_s"] / figures["eval_videos_s"]
    print(json.dumps(figures, indent=2))
    print(f"eval {figures['eval_videos_s']:.2f} videos/s; predict {figures['predict_w0_videos_s']:.2f} videos/s in one "
          f"process ({figures['ratio_w0']:.2f}x), {figures['predict_videos_s']:.2f} with decoding workers "
          f"({figures['ratio']:.2f}x); top-1 agrees with eval on {figures['predict_agree']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
