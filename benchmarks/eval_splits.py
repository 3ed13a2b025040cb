"""The 3-split mean (``dtgnet eval --split all``) on a UCF101-shaped set: one extraction over the videos the
splits share, against one evaluation per split (two extractions each, train and test), the way it ran before.

    python benchmarks/eval_splits.py [--videos 400] [--protocol knn] [--out DIR] [--json F]

Writes ``--videos`` clips (320x240, 25 fps, UCF101's clip lengths; :mod:`benchmarks.scale`'s generator) into
class folders with ``classInd.txt`` and three ``trainlist0N.txt`` / ``testlist0N.txt`` pairs, each holding
out a different third, and a TSN-ResNet18 student (8 segments at 112 px, untrained: the cost does not depend
on the weights). Prints wall time, videos decoded and peak RSS of both paths, and checks that they agree.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import CLASSES, clip_seconds, write_clip  # noqa: E402

import dtgnet.evaluation as evaluation  # noqa: E402
from dtgnet.config import load_config, to_dict  # noqa: E402
from dtgnet.students import build_student, load_student, save_student_safetensors  # noqa: E402


def make_set(root: Path, n: int, workers: int) -> list[tuple[str, int]]:
    videos = [(f"class{i % CLASSES}/c{i:05d}.mp4", i % CLASSES) for i in range(n)]
    todo = [(str(root / name), float(s), label) for (name, label), s in zip(videos, clip_seconds(n))
            if not (root / name).exists()]
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_clip, todo, chunksize=4))
    (root / "classInd.txt").write_text("".join(f"{c + 1} class{c}\n" for c in range(CLASSES)))
    for split in (1, 2, 3):
        test = {name for i, (name, _) in enumerate(videos) if i % 3 == split - 1}
        (root / f"trainlist0{split}.txt").write_text("".join(f"{n} {k + 1}\n" for n, k in videos if n not in test))
        (root / f"testlist0{split}.txt").write_text("".join(f"{n}\n" for n, _ in videos if n in test))
    return videos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=400, help="clips in the set (UCF101 has 13,320)")
    ap.add_argument("--protocol", default="knn", choices=("knn", "retrieval", "linear"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/dtgnet_eval_splits"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = args.out / "ucf"
    t0 = time.perf_counter()
    make_set(root, args.videos, args.workers)
    print(f"{args.videos} clips ready in {time.perf_counter() - t0:.0f} s under {root}", flush=True)
    cfg = load_config(None, [f"data.root={root}", "data.format=ucf101", f"data.classes={root}/classInd.txt",
                             f"data.train_list={root}/trainlist01.txt", f"data.test_list={root}/testlist01.txt",
                             "data.frames=8", "data.size=112", "data.eval_clips=1", f"run.out={args.out}/run",
                             "student.temporal_shift=true"])
    ckpt = args.out / "student.safetensors"
    model = build_student(cfg, {})
    save_student_safetensors(model, ckpt, {"config": to_dict(cfg), "teacher_heads": {}, "num_classes": 0,
                                           "self_head": True, "classes": []})
    decoded = []
    real = evaluation.extract
    evaluation.extract = lambda m, dataset, *a, **kw: decoded.append(len(dataset)) or real(m, dataset, *a, **kw)
    result = {"videos": args.videos, "protocol": args.protocol}
    t = time.perf_counter()
    once = evaluation.evaluate_checkpoints([str(ckpt)], cfg, args.protocol, [1, 2, 3], progress=True)
    result["once"] = {"seconds": round(time.perf_counter() - t, 1), "videos_decoded": sum(decoded),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "mean": once["mean"]}
    decoded.clear()
    t = time.perf_counter()
    per_split = {s: evaluation.evaluate_model(load_student(ckpt), evaluation.split_config(cfg, s), args.protocol,
                                              progress=True) for s in (1, 2, 3)}
    result["per_split"] = {"seconds": round(time.perf_counter() - t, 1), "videos_decoded": sum(decoded),
                           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    agree = all(abs(once["splits"][s][k] - per_split[s][k]) < 1e-6 for s in (1, 2, 3) for k in once["splits"][s])
    result["same_scores"] = agree
    for name in ("once", "per_split"):
        r = result[name]
        print(f"{name:>9}: {r['seconds']:7.1f} s, {r['videos_decoded']:6d} videos decoded, "
              f"peak RSS {r['peak_rss_mib']} MiB (process so far)")
    print(f"speed-up {result['per_split']['seconds'] / result['once']['seconds']:.2f}x; scores identical: {agree}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
