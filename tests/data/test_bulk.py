"""Whole-dataset decoding (prepare, teacher cache): bounded memory on long HD video, subsampling, resume
after an interruption, torchrun shards."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import dtgnet.data.bulk as bulk
from dtgnet.cli import main
from dtgnet.config import DataConfig
from dtgnet.data.lists import load_split
from dtgnet.data.prepare import PreparedReader
from dtgnet.data.synth import write_pattern_video
from dtgnet.data.video import PyAVReader

PEAK_ABOVE_BASELINE_MB = 600

MEASURE = """
import resource, sys
from dtgnet.cli import main
def rss_mb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024
base = rss_mb("VmRSS:")
args = sys.argv[1:]
assert main(["data", "prepare", *args, "--out", "prep", "--size", "64", "--workers", "0"]) == 0
assert main(["teacher", "cache", *args, "teachers.0.input_size=64", "--out", "cache", "--workers", "0"]) == 0
print(base, rss_mb("VmHWM:"))
"""


def test_long_hd_video_is_prepared_and_cached_in_bounded_memory(tmp_path):
    """A 40-s 1280x720 video (1,000 frames; 2.8 GB as full-resolution RGB) must not be held whole."""
    write_pattern_video(tmp_path / "long.mp4", seconds=40, width=1280, height=720)
    (tmp_path / "train.txt").write_text("long.mp4 0\n")
    (tmp_path / "classes.txt").write_text("a\n")
    args = [f"data.root={tmp_path}", f"data.train_list={tmp_path / 'train.txt'}",
            f"data.classes={tmp_path / 'classes.txt'}", "data.size=64"]
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    base, peak = map(float, out.stdout.split()[-2:])
    assert peak - base < PEAK_ABOVE_BASELINE_MB, f"peak {peak:.0f} MB, {peak - base:.0f} MB above the baseline"
    assert np.load(tmp_path / "prep" / "frames.npy", mmap_mode="r").shape == (1000, 64, 64, 3)
    assert np.load(tmp_path / "cache" / "imagenet.npy", mmap_mode="r").shape == (1000, 1280)


def synth_args(root):
    return [f"data.root={root}", f"data.train_list={root / 'train.txt'}", f"data.test_list={root / 'test.txt'}",
            f"data.classes={root / 'classes.txt'}", "data.size=32"]


def test_stride_keeps_source_frame_numbers(tiny_synth, tmp_path):
    for name, extra in (("full", []), ("half", ["--stride", "2"])):
        assert main(["data", "prepare", *synth_args(tiny_synth), "--out", str(tmp_path / name), "--size", "32",
                     "--workers", "0", *extra]) == 0
    full, half = (PreparedReader(tmp_path / n, tiny_synth) for n in ("full", "half"))
    path = tiny_synth / load_split(DataConfig(root=str(tiny_synth), train_list=str(tiny_synth / "train.txt")),
                                   "train").entries[0].path
    n = PyAVReader().info(path).num_frames
    assert full.info(path).num_frames == half.info(path).num_frames == n  # sampling sees the source's frames
    np.testing.assert_array_equal(half.read(path, [0, 2, 4]), full.read(path, [0, 2, 4]))
    np.testing.assert_array_equal(half.read(path, [3, n - 1]), full.read(path, [4, n - 2 + n % 2]))  # nearest kept
    assert np.load(tmp_path / "half" / "frames.npy", mmap_mode="r").shape[0] * 2 == \
        np.load(tmp_path / "full" / "frames.npy", mmap_mode="r").shape[0]


def test_interrupted_prepare_and_cache_resume_where_they_stopped(tiny_synth, tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "JOURNAL_EVERY_S", 0.0)  # journal every finished video
    args = synth_args(tiny_synth)
    assert main(["data", "prepare", *args, "--out", str(tmp_path / "ref"), "--size", "32", "--workers", "0"]) == 0
    assert main(["teacher", "cache", *args, "--out", str(tmp_path / "ref_cache"), "--workers", "0"]) == 0
    real, opened, interrupt = bulk.iter_square_frames, [], {"at": 5}

    def interrupted_at_the_fifth_video(reader, path, *a, **kw):
        opened.append(path)
        if len(opened) == interrupt["at"]:
            raise KeyboardInterrupt
        yield from real(reader, path, *a, **kw)

    monkeypatch.setattr(bulk, "iter_square_frames", interrupted_at_the_fifth_video)
    videos = {"prep": len(json.loads((tmp_path / "ref" / "index.json").read_text())["entries"]),
              "cache": len(json.loads((tmp_path / "ref_cache" / "imagenet.json").read_text())["counts"])}
    for command, out in ((["data", "prepare", "--size", "32"], "prep"), (["teacher", "cache"], "cache")):
        opened.clear()
        interrupt["at"] = 5
        assert main([*command, *args, "--out", str(tmp_path / out), "--workers", "0"]) == 130
        assert not (tmp_path / out / "index.json").exists() and not list((tmp_path / out).glob("*.npy"))
        opened.clear()
        interrupt["at"] = None
        assert main([*command, *args, "--out", str(tmp_path / out), "--workers", "0"]) == 0
        assert len(opened) == videos[out] - 4, "only the unfinished videos are decoded again"
        assert not list((tmp_path / out).glob("*.progress")) and not list((tmp_path / out).glob("*.tmp"))
    assert (tmp_path / "prep" / "frames.npy").read_bytes() == (tmp_path / "ref" / "frames.npy").read_bytes()
    assert json.loads((tmp_path / "prep" / "index.json").read_text()) == \
        json.loads((tmp_path / "ref" / "index.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / "imagenet.npy"),
                                  np.load(tmp_path / "ref_cache" / "imagenet.npy"))


SHARDED = textwrap.dedent("""
    import sys
    from dtgnet.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_torchrun_shards_give_the_single_process_result(tiny_synth, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = synth_args(tiny_synth)
    for nproc, suffix in ((1, "one"), (2, "two")):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "dtgnet"]
        for command in (["data", "prepare", *args, "--size", "32", "--out", f"prep_{suffix}"],
                        ["teacher", "cache", *args, "--out", f"cache_{suffix}"]):
            out = subprocess.run(launcher + command + ["--workers", "1"], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "prep_one" / "frames.npy").read_bytes() == (tmp_path / "prep_two" / "frames.npy").read_bytes()
    assert (tmp_path / "prep_one" / "index.json").read_text() == (tmp_path / "prep_two" / "index.json").read_text()
    one, two = (np.load(tmp_path / f"cache_{s}" / "imagenet.npy").astype(np.float32) for s in ("one", "two"))
    # the same frames, batched with other videos' frames on each rank: equal up to float16 rounding
    np.testing.assert_allclose(one, two, atol=2e-3, rtol=1e-2)
    meta = [json.loads((tmp_path / f"cache_{s}" / "imagenet.json").read_text()) for s in ("one", "two")]
    assert meta[0] == meta[1]
