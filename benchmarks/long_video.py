"""`dtgnet predict --window 2` and `dtgnet embed --window 2` over long full-HD videos: peak memory and time
per minute of video.

    python benchmarks/long_video.py [--minutes 10 60] [--width 1920 --height 1080] [--out DIR] [--json F]

Encodes one minute of 1920x1080, 25 fps H.264 (a gradient with a sliding block, x264 ultrafast) and joins
copies of its packets into files of ``--minutes`` each (no re-encoding, so the long files cost seconds to
make). A TSN-ResNet18 student with a classifier (8 segments at 112 px, untrained) runs each command in its
own process, with the default decoding workers. Memory is sampled every 0.2 s over the command's whole
process tree (main process and decoding workers): the sum of PSS (shared pages counted once) and of RSS.
Two baselines: the interpreter with torch and dtgnet imported ("over the interpreter"), and the same command
on a 40-second clip of the same video (every fixed cost, including a full batch of 16 windows).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import av

from dtgnet.config import load_config, to_dict
from dtgnet.data.synth import write_pattern_video
from dtgnet.students import build_student, save_student_safetensors

FPS = 25


def join_copies(src: Path, out: Path, copies: int) -> Path:
    """``copies`` times ``src``'s video packets, back to back, in one mp4 (stream copy)."""
    if out.exists():
        return out
    with av.open(str(src)) as first:
        stream = first.streams.video[0]
        packets = [(p.pts, p.dts, bytes(p), p.is_keyframe) for p in first.demux(stream) if p.size]
        span = max(p[0] for p in packets) + (packets[1][0] - packets[0][0] if len(packets) > 1 else 1)
        with av.open(str(out) + ".tmp.mp4", "w") as dst:
            o = dst.add_stream_from_template(stream)
            for k in range(copies):
                for pts, dts, data, key in packets:
                    p = av.Packet(data)
                    p.pts, p.dts, p.time_base, p.stream = pts + k * span, dts + k * span, stream.time_base, o
                    p.is_keyframe = key
                    dst.mux(p)
    Path(str(out) + ".tmp.mp4").rename(out)
    return out


def _children(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += _children(int(child))
    except OSError:
        pass
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over ``pid`` and its descendants."""
    pss = rss = 0
    for p in _children(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return pss, rss


def measure(command: list[str]) -> dict:
    """Wall time and peak tree memory of ``command``."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss, rss = _memory(proc.pid)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - started, "peak_pss_mib": peak_pss / 2**20, "peak_rss_mib": peak_rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--out", default="long_video_work")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    minute = work / f"minute_{args.height}p.mp4"
    if not minute.exists():
        write_pattern_video(minute, 60, args.width, args.height, FPS)
    clip = work / f"clip40s_{args.height}p.mp4"
    if not clip.exists():
        write_pattern_video(clip, 40, args.width, args.height, FPS)
    cfg = load_config(None, ["data.frames=8", "data.size=112", "student.arch=tsn_r18"], check_paths=False)
    ckpt = work / "student.safetensors"
    save_student_safetensors(build_student(cfg, {}, 10, self_head=False), ckpt,
                             {"config": to_dict(cfg), "mode": "finetune", "teacher_heads": {}, "num_classes": 10,
                              "classes": [f"class{c}" for c in range(10)], "self_head": False})
    dtgnet = [sys.executable, "-m", "dtgnet"]
    commands = {"predict": lambda v, tag: dtgnet + ["predict", str(ckpt), str(v), "--window", "2", "--no-progress",
                                                    "--out", str(work / f"predict_{tag}.jsonl")],
                "embed": lambda v, tag: dtgnet + ["embed", str(ckpt), str(v), "--window", "2", "--no-progress",
                                                  "--out", str(work / f"embed_{tag}")]}
    figures: dict = {"video": f"{args.width}x{args.height} {FPS} fps H.264", "model": "tsn_r18 8x112", "runs": {}}
    bare = measure([sys.executable, "-c", "import time, torch, dtgnet.cli, dtgnet.inference.runner; time.sleep(2)"])
    figures["interpreter"] = bare
    for name, command in commands.items():
        base = measure(command(clip, "40s"))
        figures["runs"][f"{name} 40 s"] = base
        for minutes in args.minutes:
            video = join_copies(minute, work / f"{minutes:g}min_{args.height}p.mp4", round(minutes))
            r = measure(command(video, f"{minutes:g}min"))
            r["seconds_per_video_minute"] = r["seconds"] / minutes
            r["pss_over_interpreter_mib"] = r["peak_pss_mib"] - bare["peak_pss_mib"]
            r["pss_over_40s_mib"] = r["peak_pss_mib"] - base["peak_pss_mib"]
            figures["runs"][f"{name} {minutes:g} min"] = r
            print(f"{name} {minutes:g} min: {r['seconds']:.0f} s ({r['seconds_per_video_minute']:.1f} s per minute of "
                  f"video), peak PSS {r['peak_pss_mib']:.0f} MiB ({r['pss_over_interpreter_mib']:+.0f} over the interpreter, "
                  f"{r['pss_over_40s_mib']:+.0f} over the 40-s run), peak RSS sum {r['peak_rss_mib']:.0f} MiB", flush=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
