"""A fuzz campaign against the inference decoder: real clips mutated into at least a thousand broken files,
all run through `dtgnet predict`; crashes, hangs, unaccounted files and peak memory are reported.

    python benchmarks/fuzz_decode.py [SOURCE.mp4 ...] [--mutants 1000] [--seed 0] [--timeout 10] [--out DIR] [--json F]

Sources: the clips given, or by default six written here (H.264 mp4 at 320x240, 640x360 and 1280x720, an
mkv, a portrait clip, 30000/1001 fps). Mutations, drawn from ``--seed``: bit flips anywhere; bit flips and
garbage in the first kilobytes (the ``ftyp`` / EBML header); bytes overwritten inside the ``moov`` box (the
sample tables); truncation; a zeroed range; a duplicated range; two top-level boxes swapped; a top-level box
cut out; a box size field rewritten. The mutants run in chunks of ``--chunk`` files, each one `dtgnet predict`
process with a per-file ``--decode-timeout`` and a wall-clock limit per chunk: a process that dies (other
than exit status 0 or 1) is a crash, and its files are rerun one by one to name the one that did it; a chunk
past its limit is a hang. Every mutant must come back as a result or a reason.
"""
from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_video import _memory  # noqa: E402

from dtgnet.config import load_config, to_dict  # noqa: E402
from dtgnet.data.synth import write_h264, write_pattern_video  # noqa: E402
from dtgnet.students import build_student, save_student_safetensors  # noqa: E402


def default_sources(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for w, h, secs in ((320, 240, 3), (640, 360, 2), (1280, 720, 1)):
        out.append(write_pattern_video(d / f"pattern_{w}x{h}.mp4", secs, w, h) if not (d / f"pattern_{w}x{h}.mp4").exists()
                   else d / f"pattern_{w}x{h}.mp4")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 180, 3), dtype=np.uint8) for _ in range(30)]
    for name, w, h, fps in (("portrait.mp4", 180, 240, 25), ("ntsc.mkv", 180, 240, 30000 / 1001)):
        if not (d / name).exists():
            _write_rate(d / name, frames, w, h, fps)
        out.append(d / name)
    if not (d / "gop1.mp4").exists():
        write_h264(d / "gop1.mp4", frames, 180, 240, 25, {"preset": "ultrafast", "g": "1"})
    return out + [d / "gop1.mp4"]


def _write_rate(path: Path, frames, w: int, h: int, fps: float) -> None:
    import fractions

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def top_boxes(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, size, type) of an mp4's top-level boxes (stops at the first that makes no sense)."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size == 1 and at + 16 <= len(data):
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        if size < 8 or at + size > len(data):
            break
        boxes.append((at, size, kind))
        at += size
    return boxes


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutation of ``data``: (its name, the mutated bytes)."""
    b = bytearray(data)
    n = len(b)
    boxes = top_boxes(data)
    kinds = ["bitflip", "header_flip", "header_garbage", "moov_garbage", "truncate", "zero_range", "duplicate_range"]
    if len(boxes) >= 2:
        kinds += ["box_swap", "box_cut", "box_size"]
    kind = kinds[rng.integers(len(kinds))]
    if kind in ("bitflip", "header_flip"):
        span = n if kind == "bitflip" else min(n, 4096)
        for pos in rng.integers(0, span, size=int(rng.integers(1, 65))):
            b[pos] ^= 1 << int(rng.integers(8))
    elif kind == "header_garbage":
        start = int(rng.integers(0, min(n, 1024)))
        length = int(rng.integers(1, 257))
        b[start:start + length] = rng.bytes(len(b[start:start + length]))
    elif kind == "moov_garbage":
        at = data.find(b"moov")
        lo = at if at >= 0 else 0
        hi = next((o + s for o, s, t in boxes if t == b"moov"), n)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(lo, max(lo + 1, hi - 8)))
            b[pos:pos + 8] = rng.bytes(8)
    elif kind == "truncate":
        b = b[:int(rng.integers(0, n))]
    elif kind == "zero_range":
        start = int(rng.integers(0, n))
        end = min(n, start + int(rng.integers(1, 4097)))
        b[start:end] = bytes(end - start)
    elif kind == "duplicate_range":
        start = int(rng.integers(0, n))
        piece = b[start:start + int(rng.integers(1, 8193))]
        b[start:start] = piece
    elif kind == "box_swap":
        i, j = sorted(rng.choice(len(boxes), size=2, replace=False))
        parts = [data[o:o + s] for o, s, _ in boxes]
        parts[i], parts[j] = parts[j], parts[i]
        b = bytearray(b"".join(parts) + data[sum(s for _, s, _ in boxes):])
    elif kind == "box_cut":
        o, s, _ = boxes[int(rng.integers(len(boxes)))]
        b = b[:o] + b[o + s:]
    else:  # box_size: a size field that lies
        o, s, _ = boxes[int(rng.integers(len(boxes)))]
        b[o:o + 4] = struct.pack(">I", int(rng.choice([0, 1, 7, s // 2, s + 13, 2**32 - 1])))
    return kind, bytes(b)


def run_chunk(command: list[str], limit: float) -> dict:
    """Run one predict process; wall time, peak tree PSS, exit status (None: killed past ``limit``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _memory(proc.pid)[0])
        if time.perf_counter() - started > limit:
            proc.kill()
            proc.wait()
            return {"rc": None, "seconds": limit, "peak_pss_mib": peak / 2**20, "stderr": ""}
        time.sleep(0.1)
    return {"rc": proc.returncode, "seconds": time.perf_counter() - started, "peak_pss_mib": peak / 2**20,
            "stderr": proc.stderr.read()[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="clips to mutate (default: six written here)")
    ap.add_argument("--mutants", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="predict's --decode-timeout")
    ap.add_argument("--chunk", type=int, default=100, help="mutants per predict process")
    ap.add_argument("--out", default="fuzz_work")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.out)
    sources = [Path(s) for s in args.sources] or default_sources(work / "sources")
    rng = np.random.default_rng(args.seed)
    originals = [s.read_bytes() for s in sources]
    mutants = work / "mutants"
    mutants.mkdir(parents=True, exist_ok=True)
    kinds: Counter = Counter()
    names = []
    for i in range(args.mutants):
        k = int(rng.integers(len(sources)))
        kind, data = mutate(originals[k], rng)
        kinds[kind] += 1
        suffix = sources[k].suffix if sources[k].suffix in (".mp4", ".mkv", ".mov", ".webm") else ".mp4"
        path = mutants / f"{i:05d}_{kind}{suffix}"
        path.write_bytes(data)
        names.append(path)
    cfg = load_config(None, ["data.frames=4", "data.size=64", "student.arch=tsn_r18"], check_paths=False)
    ckpt = work / "student.safetensors"
    save_student_safetensors(build_student(cfg, {}, 4, self_head=False), ckpt,
                             {"config": to_dict(cfg), "mode": "finetune", "teacher_heads": {}, "num_classes": 4,
                              "classes": ["a", "b", "c", "d"], "self_head": False})

    def predict(files: list[Path], tag: str) -> tuple[dict, list[dict]]:
        listing = work / f"{tag}.txt"
        listing.write_text("".join(f"{p.resolve()}\n" for p in files))
        out = work / f"{tag}.jsonl"
        out.unlink(missing_ok=True)
        r = run_chunk([sys.executable, "-m", "dtgnet", "predict", str(ckpt), str(listing), "--out", str(out),
                       "--decode-timeout", str(args.timeout), "--no-progress", "--window", "1"],
                      limit=60 + 4 * args.timeout * len(files))
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        return r, records

    started = time.perf_counter()
    records, crashes, hangs, peak = [], [], [], 0.0
    for c in range(0, len(names), args.chunk):
        files = names[c:c + args.chunk]
        r, got = predict(files, f"chunk{c // args.chunk:03d}")
        peak = max(peak, r["peak_pss_mib"])
        if r["rc"] in (0, 1) and len(got) == len(files):
            records += got
            continue
        (hangs if r["rc"] is None else crashes).append({"chunk": c // args.chunk, "rc": r["rc"], "stderr": r["stderr"]})
        for f in files:  # name the file that did it
            r1, got1 = predict([f], "single")
            peak = max(peak, r1["peak_pss_mib"])
            if r1["rc"] in (0, 1) and len(got1) == 1:
                records += got1
            else:
                (hangs if r1["rc"] is None else crashes).append({"file": f.name, "rc": r1["rc"],
                                                                 "stderr": r1["stderr"][-500:]})
    seconds = time.perf_counter() - started
    outcome: Counter = Counter()
    for r in records:
        if "error" not in r:
            outcome["result"] += 1
            continue
        reason = r["error"]
        outcome["timeout" if "no progress" in reason else reason.split(":")[0].split(" after")[0][:40]] += 1
    accounted = {Path(r["path"]).name for r in records}
    figures = {"mutants": len(names), "sources": [s.name for s in sources], "mutations": dict(kinds),
               "accounted_for": len(accounted), "missing": sorted({p.name for p in names} - accounted)[:20],
               "results": outcome["result"], "reasons": {k: v for k, v in outcome.most_common() if k != "result"},
               "crashes": [c for c in crashes if "file" in c], "crashed_chunks": len([c for c in crashes if "chunk" in c]),
               "hangs": [h for h in hangs if "file" in h], "hung_chunks": len([h for h in hangs if "chunk" in h]),
               "decode_timeouts": outcome["timeout"], "peak_pss_mib": peak, "seconds": seconds,
               "decode_timeout_s": args.timeout}
    print(json.dumps(figures, indent=2))
    print(f"{len(names)} mutants: {len(accounted)} accounted for ({outcome['result']} results, "
          f"{len(records) - outcome['result']} reasons), {len(figures['crashes'])} crashing files, "
          f"{len(figures['hangs'])} hanging files, {outcome['timeout']} decode timeouts; peak PSS {peak:.0f} MiB; "
          f"{seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
