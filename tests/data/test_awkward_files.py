"""Awkward real-world files, each generated here: decoded correctly, or skipped with its reason by scan,
prepare and the teacher cache; never silently wrong."""
import fractions
import json
import struct

import av
import numpy as np
import pytest

from dtgnet.cli import main
from dtgnet.config import DataConfig
from dtgnet.data.dataset import VideoDataset
from dtgnet.data.lists import load_split
from dtgnet.data.prepare import PreparedReader
from dtgnet.data.video import PyAVReader, iter_square_frames

W, H = 64, 48


def frame_image(i: int, w: int = W, h: int = H) -> np.ndarray:
    img = np.full((h, w, 3), (i * 20) % 255, np.uint8)
    img[:, : w // 2, 0] = 200  # a red left half: a colour conversion gone wrong shows
    return img


def encode(path, n=10, pix_fmt="yuv420p", pts_ms=None, audio_only=False, empty_video=False, w=W, h=H):
    with av.open(str(path), "w") as c:
        if not audio_only:
            v = c.add_stream("libx264", rate=25)
            v.width, v.height, v.pix_fmt = w, h, pix_fmt
            if pts_ms is not None:
                v.time_base = fractions.Fraction(1, 1000)
        if audio_only or empty_video:
            a = c.add_stream("aac", rate=16000)
            for i in range(4):
                fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, i * 1024
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
        for i in range(0 if empty_video or audio_only else n):
            f = av.VideoFrame.from_ndarray(frame_image(i, w, h), format="rgb24")
            f.pts = i if pts_ms is None else pts_ms[i]
            if pts_ms is not None:
                f.time_base = fractions.Fraction(1, 1000)
            for p in v.encode(f):
                c.mux(p)
        if not audio_only:
            for p in v.encode():  # opens the encoder: a video track with no frames
                c.mux(p)
    return path


def rotated_for_display(src, out):
    """A copy of an mp4 whose track matrix (``tkhd``) says "turn 90 degrees clockwise to display", as a phone
    writes a portrait recording: coded landscape, shown portrait."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0  # a version-0 box: the matrix is 40 bytes into it
    data[at + 44:at + 80] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    root = tmp_path_factory.mktemp("awkward")
    good = {
        "vfr.mp4": encode(root / "vfr.mp4", pts_ms=[0, 40, 80, 200, 240, 400, 440, 480, 900, 940]),
        "yuvj.mp4": encode(root / "yuvj.mp4", pix_fmt="yuvj420p"),
        "ten_bit.mp4": encode(root / "ten_bit.mp4", pix_fmt="yuv420p10le"),
        "yuv444.mp4": encode(root / "yuv444.mp4", pix_fmt="yuv444p"),
        "short.mp4": encode(root / "short.mp4", n=2),
        "portrait_phone.mp4": rotated_for_display(encode(root / "landscape.mp4"), root / "portrait_phone.mp4"),
    }
    (root / "landscape.mp4").unlink()
    encode(root / "audio_only.m4a", audio_only=True)
    encode(root / "no_frames.mkv", empty_video=True)
    data = bytearray(encode(root / "whole.mp4", n=60, w=160, h=120).read_bytes())
    data[len(data) // 2: len(data) // 2 + 2000] = np.random.default_rng(0).bytes(2000)
    (root / "breaks_half_way.mp4").write_bytes(bytes(data))
    (root / "whole.mp4").unlink()
    bad = {"audio_only.m4a": "no video stream", "no_frames.mkv": "no decodable frames",
           "breaks_half_way.mp4": "decoding failed after"}
    names = sorted(good) + sorted(bad)
    (root / "train.txt").write_text("".join(f"{n} 0\n" for n in names))
    (root / "classes.txt").write_text("a\n")
    return root, good, bad


def test_odd_formats_decode_to_the_right_colours_and_counts(awkward):
    root, good, _ = awkward
    reader = PyAVReader()
    for name in good:
        n = reader.info(root / name).num_frames
        assert n == (2 if name == "short.mp4" else 10), name
        frames = reader.read(root / name, range(n))
        streamed = np.stack([f[0] for _, f in iter_square_frames(reader, root / name, [H])])
        if name == "portrait_phone.mp4":  # shown as the phone held it: the coded left half is on top
            frames, streamed = np.rot90(frames, k=1, axes=(1, 2)), np.rot90(streamed, k=1, axes=(1, 2))
        assert frames.shape == (n, H, W, 3) and streamed.shape == (n, H, H, 3), name
        for i in range(n):  # lossy coding, but the red half and the grey level come through
            left, right = frames[i, :, : W // 2 - 4].mean((0, 1)), frames[i, :, W // 2 + 4:].mean((0, 1))
            assert left[0] > 150 and abs(right - (i * 20) % 255).max() < 12, (name, i, left, right)
            left, right = streamed[i, :, :4].mean((0, 1)), streamed[i, :, -4:].mean((0, 1))
            assert left[0] > 150 and abs(right - (i * 20) % 255).max() < 12, (name, i, left, right)


def test_scan_prepare_and_cache_skip_each_bad_file_with_its_reason(awkward, tmp_path):
    root, good, bad = awkward
    args = [f"data.root={root}", f"data.train_list={root / 'train.txt'}", f"data.classes={root / 'classes.txt'}",
            "data.size=32", "data.frames=8", "teachers.0.input_size=32"]
    assert main(["data", "scan", str(root / "train.txt"), "--root", str(root), "--out", str(tmp_path / "m.json")]) == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert sorted(manifest["ok"]) == sorted(good)
    reasons = {b["path"]: b["reason"] for b in manifest["bad"]}
    assert reasons.keys() == bad.keys() and all(bad[k] in reasons[k] for k in bad), reasons
    assert main(["data", "prepare", *args, "--out", str(tmp_path / "prep"), "--size", "32", "--workers", "0"]) == 0
    index = json.loads((tmp_path / "prep" / "index.json").read_text())
    assert sorted(index["entries"]) == sorted(good)
    assert {b["path"]: b["reason"] for b in index["bad"]}.keys() == bad.keys()
    assert main(["teacher", "cache", *args, "--out", str(tmp_path / "cache"), "--workers", "0"]) == 0
    meta = json.loads((tmp_path / "cache" / "imagenet.json").read_text())
    kept = dict(zip([row[0] for row in meta["data"]], meta["counts"]))
    assert all(kept[n] == 0 for n in bad) and kept["short.mp4"] == 2 and kept["vfr.mp4"] == 10
    # a clip of 2 frames still gives 8-frame samples (frames repeat), from the prepared copy too
    cfg = DataConfig(root=str(root), train_list=str(root / "train.txt"), classes=str(root / "classes.txt"))
    videos = load_split(cfg, "train")
    short = [e for e in videos.entries if e.path == "short.mp4"]
    for reader in (PyAVReader(), PreparedReader(tmp_path / "prep", root)):
        ds = VideoDataset(videos, "pair", 8, 32, reader=reader, entries=short)
        assert ds[0]["a"].shape == (8, 3, 32, 32) and not ds[0]["bad"]
