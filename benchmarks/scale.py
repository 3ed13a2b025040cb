"""Scale rehearsal: how the data path and one epoch cost grow with the number of videos.

    python benchmarks/scale.py [--sizes 100 200 400 800] [--out DIR] [--json F] [--plot F]

Generates a UCF101-shaped set once (320x240, 25 fps H.264, 10 classes, clip lengths drawn like UCF101's:
log-normal with UCF101's 7.21-s mean, clipped to its 1.06-71.04 s range; a panning real photograph with a
moving disc and camera noise, at about UCF101's bitrate, so decoding costs what it costs on the real set),
then for each N runs every stage on the first N videos, each as its own process under ``/usr/bin/time -v``: ``data scan``, ``data prepare`` (64 px), ``teacher
cache`` (EfficientNet-Lite0 at 112 px, frames kept at ``--cache-fps``), one pre-training epoch of a
TSN-ResNet18 (8 frames at 56 px, prepared data, cached teacher) and a kNN evaluation (a held-out fifth of
the videos against the rest). It prints and writes, per stage and N: wall time, time per video, frames/s,
peak RSS and disk; a linear fit ``wall = fixed + per_video * N`` per stage; and a plot.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dtgnet.data.synth import write_h264

UCF101_MEAN_S, UCF101_MIN_S, UCF101_MAX_S = 7.21, 1.06, 71.04  # clip lengths, UCF101 paper (Soomro et al. 2012)
WIDTH, HEIGHT, FPS, CLASSES = 320, 240, 25, 10
STAGES = ("scan", "prepare", "teacher cache", "pretrain epoch", "knn eval")


def clip_seconds(n: int, seed: int = 0) -> np.ndarray:
    """UCF101-like clip lengths: log-normal (sigma 0.6) with UCF101's mean, clipped to its range."""
    sigma = 0.6
    mu = np.log(UCF101_MEAN_S) - sigma ** 2 / 2
    return np.clip(np.random.default_rng(seed).lognormal(mu, sigma, n), UCF101_MIN_S, UCF101_MAX_S)


def write_clip(args: tuple[str, float, int]) -> int:
    """One textured clip: a 320x240 window panning over a real photograph, a disc moving per the class."""
    from skimage import data as skdata
    from skimage.transform import resize

    path, seconds, label = args
    photo = [skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket][label % 4]()
    photo = (resize(photo, (HEIGHT * 2, WIDTH * 2), anti_aliasing=True) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    count = round(seconds * FPS)

    def frames():
        for i in range(count):
            t = i / max(count - 1, 1)
            ox, oy = int(t * WIDTH * 0.9), int((0.5 + 0.4 * np.sin(2 * np.pi * t)) * HEIGHT * 0.9)
            img = photo[oy:oy + HEIGHT, ox:ox + WIDTH].copy()
            angle = 2 * np.pi * t * (1 + label // 4) * (1 if label % 2 else -1)
            cx, cy = WIDTH / 2 + 80 * np.cos(angle), HEIGHT / 2 + 60 * np.sin(angle)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 20 ** 2] = (255, 40 * label % 256, 0)
            yield np.clip(img + noise.normal(0, 3, img.shape), 0, 255).astype(np.uint8)  # camera noise

    noise = np.random.default_rng(label)
    # crf 18 with the noise gives about 3 KiB a frame, UCF101's bitrate (6.5 GB for 2.4 M frames)
    return write_h264(Path(path), frames(), WIDTH, HEIGHT, FPS, {"preset": "veryfast", "crf": "18", "g": str(2 * FPS)})


def generate(data: Path, n: int, workers: int) -> list[tuple[str, int, int]]:
    """``n`` clips under ``data`` (kept between runs); returns (name, label, frames) per clip."""
    data.mkdir(parents=True, exist_ok=True)
    seconds = clip_seconds(n)
    jobs = [(str(data / f"c{i:05d}.mp4"), float(s), i % CLASSES) for i, s in enumerate(seconds)]
    todo = [j for j in jobs if not Path(j[0]).exists()]
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        for k, _ in enumerate(pool.map(write_clip, todo, chunksize=4), 1):
            if k % 50 == 0:
                print(f"  generated {k}/{len(todo)} clips ({time.perf_counter() - t:.0f} s)", flush=True)
    (data / "classes.txt").write_text("".join(f"class{c}\n" for c in range(CLASSES)))
    return [(Path(p).name, label, round(s * FPS)) for p, s, label in jobs]


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one command under /usr/bin/time -v; a failure stops the rehearsal."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return wall, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20 if path.exists() else 0.0


def rehearse(work: Path, data: Path, clips: list, n: int, cache_fps: float, quiet: bool = False) -> dict:
    """Every stage on the first ``n`` clips; one row per stage."""
    run = work / f"n{n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    chosen = clips[:n]
    test = {i for i in range(n) if i % 5 == 4}
    for name, rows in (("train", [c for i, c in enumerate(chosen) if i not in test]),
                       ("test", [c for i, c in enumerate(chosen) if i in test])):
        (run / f"{name}.txt").write_text("".join(f"{c[0]} {c[1]}\n" for c in rows))
    frames = sum(c[2] for c in chosen)
    train_frames = sum(c[2] for i, c in enumerate(chosen) if i not in test)
    dtgnet = [sys.executable, "-m", "dtgnet"]
    common = [f"data.root={data}", f"data.train_list={run / 'train.txt'}", f"data.test_list={run / 'test.txt'}",
              f"data.classes={data / 'classes.txt'}", "data.frames=8", "data.size=56", "data.eval_clips=2",
              "student.arch=tsn_r18", "teachers.0.input_size=112", "optim.batch_size=16"]
    train = [*common, f"data.prepared={run / 'prep'}", f"run.teacher_cache_dir={run / 'cache'}",
             "optim.epochs=1", f"run.out={run / 'pretrain'}"]
    cmds = {"scan": ([*dtgnet, "data", "scan", str(run / "train.txt"), "--root", str(data),
                      "--classes", str(data / "classes.txt"), "--out", str(run / "manifest.json")], None, frames),
            "prepare": ([*dtgnet, "data", "prepare", *common, "--out", str(run / "prep"), "--size", "64"],
                        run / "prep", frames),
            "teacher cache": ([*dtgnet, "teacher", "cache", *common, "--out", str(run / "cache"),
                               "--fps", str(cache_fps)], run / "cache", train_frames),
            "pretrain epoch": ([*dtgnet, "pretrain", *train, "--no-progress"], run / "pretrain", None),
            "knn eval": ([*dtgnet, "eval", "--checkpoint", str(run / "pretrain" / "checkpoints" / "last.pt"),
                          "--protocol", "knn", f"data.prepared={run / 'prep'}"], None, None)}
    rows = []
    for stage in STAGES:
        cmd, out_dir, stage_frames = cmds[stage]
        wall, peak = measure(cmd)
        rows.append({"n": n, "stage": stage, "wall_s": wall, "s_per_video": wall / n, "peak_rss_mib": peak,
                     "frames_per_s": stage_frames / wall if stage_frames else None,
                     "disk_mib": disk_mib(out_dir) if out_dir else 0.0, "frames": frames})
        if quiet:
            continue
        print(f"N={n:5d} {stage:15s} {wall:7.1f} s  {wall / n * 1000:6.0f} ms/video  peak {peak:6.0f} MiB"
              + (f"  {stage_frames / wall:6.0f} frames/s" if stage_frames else "")
              + (f"  disk {rows[-1]['disk_mib']:.0f} MiB" if out_dir else ""), flush=True)
    return {"rows": rows, "frames": frames, "train_frames": train_frames}


def fit(rows: list[dict]) -> dict:
    """Per stage: wall = fixed + per_video * N (least squares), and how flat the time per video is."""
    out = {}
    for stage in STAGES:
        n = np.array([r["n"] for r in rows if r["stage"] == stage], float)
        wall = np.array([r["wall_s"] for r in rows if r["stage"] == stage])
        per_video, fixed = np.polyfit(n, wall, 1)
        marginal = np.diff(wall) / np.diff(n)  # seconds per added video between consecutive N
        rss = [r["peak_rss_mib"] for r in rows if r["stage"] == stage]
        out[stage] = {"fixed_s": fixed, "per_video_s": per_video,
                      "marginal_spread": float(marginal.max() / marginal.min() - 1) if len(n) > 2 else None,
                      "peak_rss_spread": max(rss) / min(rss) - 1}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in STAGES:
        r = [x for x in rows if x["stage"] == stage]
        ax1.plot([x["n"] for x in r], [x["wall_s"] for x in r], "o-", label=stage)
        ax2.plot([x["n"] for x in r], [x["peak_rss_mib"] for x in r], "o-", label=stage)
    ax1.set(xlabel="videos", ylabel="wall time (s)", title="wall time per stage")
    ax2.set(xlabel="videos", ylabel="peak RSS (MiB)", title="peak resident memory per stage")
    ax2.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------ cost model

DATASETS = {  # videos, mean seconds, fps of the usual copies
    "UCF101": (13_320, 7.21, 25),  # 1,600 minutes in all (Soomro et al. 2012)
    "HMDB51": (6_766, 3.5, 30),  # assumed mean: clips have at least 101 frames; run `dtgnet data scan` for yours
    "Kinetics-400": (240_000, 10.0, 30),  # train split, 10-s clips
}
# H200 (bf16, torch 2.11) throughputs measured outside this rehearsal, for the GPU rows
GPU = {"student_seq_per_s": 1_644,  # TSN-ResNet18 8x224^2 training, sequences/s
       "teacher_img_per_s": 21_700}  # EfficientNet-B0 at 224^2 inference, a stand-in for Lite0
MACHINES = {  # name: (CPU cores doing decode, GPUs)
    "this machine (2 cores)": (2, 0),
    "1 H200, 16 cores": (16, 1),
    "4 nodes x 8 H200, 128 cores each": (512, 32),
}


def rates(result: dict) -> dict:
    """Per-core throughputs of each stage, from the fitted marginal cost per video at the largest N."""
    n = max(int(k) for k in result["frames"])
    frames, train_frames = result["frames"][str(n)], result["train_frames"][str(n)]
    train_videos = n - n // 5
    t = {s: result["fit"][s]["per_video_s"] * n for s in STAGES}  # marginal seconds for n videos
    cores = result["cores"]
    return {"decode_frames_per_core_s": frames / t["prepare"] / cores,
            "cache_frames_per_core_s": train_frames / t["teacher cache"] / cores,
            "epoch_videos_per_core_s": train_videos / t["pretrain epoch"] / cores}


def extrapolate(result: dict) -> list[dict]:
    """Hours per stage for each dataset and machine: CPU stages scale with cores; on a GPU machine the
    teacher cache and the epoch take the longer of their CPU decode and their GPU compute."""
    r = rates(result)
    out = []
    for name, (videos, seconds, fps) in DATASETS.items():
        frames = videos * seconds * fps
        kept = videos * seconds * result["cache_fps"]
        for machine, (cores, gpus) in MACHINES.items():
            prepare_h = frames / (r["decode_frames_per_core_s"] * cores) / 3600
            if gpus:
                cache_h = max(frames / (r["decode_frames_per_core_s"] * cores),
                              kept / (GPU["teacher_img_per_s"] * gpus)) / 3600
                epoch_h = videos * 2 / (GPU["student_seq_per_s"] * gpus) / 3600  # two views per video
            else:
                cache_h = frames / (r["cache_frames_per_core_s"] * cores) / 3600
                epoch_h = videos / (r["epoch_videos_per_core_s"] * cores) / 3600
            out.append({"dataset": name, "machine": machine, "frames": frames, "prepare_h": prepare_h,
                        "cache_h": cache_h, "epoch_h": epoch_h})
    return out


def footprints() -> list[dict]:
    """Disk of each choice: prepared frames (S*S*3 bytes) and a 1280-d float16 teacher cache (2,560 bytes)."""
    out = []
    for name, (videos, seconds, fps) in DATASETS.items():
        row = {"dataset": name}
        for keep in (8, fps):
            frames = videos * seconds * keep
            for size in (64, 112, 128):
                row[f"prepared_{size}px_{keep}fps_gb"] = frames * size * size * 3 / 1e9
            row[f"cache_1280d_{keep}fps_gb"] = frames * 1280 * 2 / 1e9
        out.append(row)
    return out


def duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def print_model(result: dict) -> None:
    r = rates(result)
    print(f"\nper core: decode+prepare {r['decode_frames_per_core_s']:.0f} frames/s, teacher cache "
          f"{r['cache_frames_per_core_s']:.0f} source frames/s (kept at {result['cache_fps']:g} fps), pre-training "
          f"{r['epoch_videos_per_core_s']:.2f} videos/s")
    print(f"{'dataset':13s} {'machine':34s} {'frames':>8s} {'prepare':>9s} {'cache':>9s} {'epoch':>9s}")
    for e in extrapolate(result):
        print(f"{e['dataset']:13s} {e['machine']:34s} {e['frames'] / 1e6:7.1f}M {duration(e['prepare_h']):>9s} "
              f"{duration(e['cache_h']):>9s} {duration(e['epoch_h']):>9s}")
    for f in footprints():
        print(f["dataset"] + ": " + ", ".join(f"{k[:-3]} {v:.1f} GB" for k, v in f.items() if k != "dataset"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--cache-fps", type=float, default=8.0, help="frames per second the teacher cache keeps")
    ap.add_argument("--out", default="", help="working directory, kept for reruns (default: a temporary one)")
    ap.add_argument("--json", default="", help="write the figures here")
    ap.add_argument("--plot", default="", help="write the plot here (png)")
    ap.add_argument("--from-json", default="", help="print the cost model (and --plot) of figures written before; "
                                                    "measure nothing")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        print_model(result)
        if args.plot:
            plot(result["rows"], Path(args.plot))
        return
    work = Path(args.out or tempfile.mkdtemp(prefix="dtgnet-scale-"))
    print(f"working in {work}; {os.cpu_count()} cores", flush=True)
    t = time.perf_counter()
    clips = generate(work / "data", max(args.sizes), os.cpu_count() or 1)
    print(f"data: {len(clips)} clips, {sum(c[2] for c in clips)} frames, "
          f"{disk_mib(work / 'data'):.0f} MiB ({time.perf_counter() - t:.0f} s)", flush=True)
    rehearse(work, work / "data", clips, 20, args.cache_fps, quiet=True)  # warm-up: first-run costs of the disk and the interpreter
    runs = {n: rehearse(work, work / "data", clips, n, args.cache_fps) for n in sorted(args.sizes)}
    rows = [r for run in runs.values() for r in run["rows"]]
    fits = fit(rows) if len(args.sizes) > 1 else {}
    for stage, f in fits.items():
        spread = f"{f['marginal_spread'] * 100:.0f} %" if f["marginal_spread"] is not None else "-"
        print(f"{stage:15s} fixed {f['fixed_s']:6.1f} s + {f['per_video_s'] * 1000:6.0f} ms/video; "
              f"marginal cost spread {spread}; peak RSS spread {f['peak_rss_spread'] * 100:.0f} %")
    result = {"cores": os.cpu_count(), "cache_fps": args.cache_fps, "rows": rows, "fit": fits,
              "frames": {str(n): run["frames"] for n, run in runs.items()},
              "train_frames": {str(n): run["train_frames"] for n, run in runs.items()},
              "data_mib": disk_mib(work / "data"), "clips": len(clips)}
    if fits:
        print_model(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
