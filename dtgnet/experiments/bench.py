"""`dtgnet bench`: where the time goes, measured in one run on the same SynthActions data.

* ``student_step_s``: a training step of the student alone (two views, self term only);
* ``dtg_online_step_s``: a DTG step with both teachers (bundled ImageNet + image-based action) run online;
* ``dtg_cached_step_s``: the same DTG step reading the teachers' per-frame embeddings from the cache;
* ``loader_naive_clips_per_s`` / ``loader_fast_clips_per_s``: sequences per second out of the DataLoader,
  decoding every sample with PyAV vs reading `dtgnet data prepare`'s frames (cropped uint8 views);
* ``colour_ms_per_batch``: the colour augmentation of one batch's two views, done on the training device.

Step times are medians over timed steps on batches loaded beforehand (the data path is measured apart).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import DataConfig, TeacherConfig, to_dict, validate
from ..data.dataset import VideoDataset, collate_views
from ..data.lists import load_split
from ..data.prepare import PreparedReader, prepare
from ..data.synth import SynthPreset, generate, write_pattern_video
from ..data.video import get_reader
from ..teachers import train_action_teacher
from ..training import Trainer

FULL = dict(preset="quick", batch=16, frames=4, size=48, teacher_input=96, steps=8, loader_batches=12,
            hd_videos=16, hd_seconds=2, hd_batches=2, loader_seconds=3.0)
QUICK = dict(preset=SynthPreset(pairs=2, train_per_class=8, val_per_class=1, test_per_class=1, stills_per_class=8,
                                frames=12, size=48), batch=8, frames=4, size=40, teacher_input=64, steps=3,
             loader_batches=3, hd_videos=8, hd_seconds=1, hd_batches=1, loader_seconds=0.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(cfg, work: Path, name: str, steps: int) -> tuple[float, str]:
    cfg = copy.deepcopy(cfg)
    cfg.run.out = str(work / "runs" / name)
    trainer = Trainer(cfg, "pretrain", force=True, progress=False)
    try:
        loader = iter(trainer.loader(0))
        batches = [trainer.to_batch(next(loader)) for _ in range(min(steps + 2, trainer.steps_per_epoch))]
        times = []
        for i in range(steps + 2):
            batch = batches[i % len(batches)]
            sync(trainer.device)
            t = time.perf_counter()
            trainer.train_step(batch)
            sync(trainer.device)
            if i >= 2:  # the first steps warm up allocators and kernels
                times.append(time.perf_counter() - t)
        return statistics.median(times), str(trainer.device)
    finally:
        trainer.close()


def _colour_time(cfg, device: torch.device, repeats: int = 10) -> float:
    """Median seconds to colour a batch's two views on ``device`` (the loader ships them uncoloured)."""
    from ..data.transforms import apply_colour, random_colour

    rng = np.random.default_rng(0)
    shape = (cfg.optim.batch_size, cfg.data.frames, 3, cfg.data.size, cfg.data.size)
    views = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    params = torch.stack([random_colour(rng, True) for _ in range(shape[0])])
    times = []
    for _ in range(repeats + 2):
        sync(device)
        t = time.perf_counter()
        apply_colour(views, params), apply_colour(views, params)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def _loader_rate(videos, reader, cfg, batches: int, decoder_scaling: bool = True, min_seconds: float = 3.0) -> float:
    """Sequences per second out of a DataLoader with persistent workers, as training uses it: over at least
    ``batches`` batches and ``min_seconds``, after every worker has delivered its first batch."""
    ds = VideoDataset(videos, "pair", cfg.data.frames, cfg.data.size, reader=reader, flip=False)
    if not decoder_scaling:
        ds.decode_short_side = None
    workers = cfg.data.workers
    loader = DataLoader(ds, batch_size=cfg.optim.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        collate_fn=collate_views,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))

    def batches_forever():
        while True:
            yield from loader

    it = batches_forever()
    for _ in range(max(workers, 1)):  # start-up (workers, first open) is not throughput
        next(it)
    t, n, k = time.perf_counter(), 0, 0
    while k < batches or time.perf_counter() - t < min_seconds:
        n += 2 * len(next(it)["index"])
        k += 1
    return n / (time.perf_counter() - t)


def run_bench(device: str = "cpu", quick: bool = False, work_dir: str | None = None, progress: bool = True) -> dict:
    from .recipes import base_config

    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        work = Path(tmp)
        generate(work / "data", sizes["preset"], seed=0, progress=progress)
        action = train_action_teacher(work / "data" / "stills", work / "action.safetensors",
                                      input_size=sizes["teacher_input"], epochs=5, progress=False)
        cfg = base_config(work / "data", _plan(sizes), seed=0)
        cfg.run.device, cfg.run.teacher_cache = device, False
        cfg.optim.batch_size, cfg.optim.epochs = sizes["batch"], 50
        cfg.teachers = [TeacherConfig("imagenet", "efficientnet_lite0", "", 1.0, sizes["teacher_input"]),
                        TeacherConfig("action", "action", action["path"], 1.0, sizes["teacher_input"])]
        validate(cfg)
        student_only = copy.deepcopy(cfg)
        student_only.teachers = []
        cached = copy.deepcopy(cfg)
        cached.run.teacher_cache = True
        results = {}
        results["student_step_s"], dev = step_time(student_only, work, "student", sizes["steps"])
        results["dtg_online_step_s"], _ = step_time(cfg, work, "online", sizes["steps"])
        results["dtg_cached_step_s"], _ = step_time(cached, work, "cached", sizes["steps"])
        videos = load_split(cfg.data, "train")
        results["loader_naive_clips_per_s"] = _loader_rate(videos, get_reader("pyav"), cfg, sizes["loader_batches"],
                                                             min_seconds=sizes["loader_seconds"])
        prepare([videos], get_reader("pyav"), work / "prepared", max(cfg.data.size, 48), progress=False)
        results["colour_ms_per_batch"] = 1000 * _colour_time(cfg, torch.device(dev))
        results["loader_fast_clips_per_s"] = _loader_rate(videos, PreparedReader(work / "prepared", work / "data"),
                                                          cfg, sizes["loader_batches"], min_seconds=sizes["loader_seconds"])
        hd = _hd_videos(work / "hd", sizes["hd_videos"], sizes["hd_seconds"])
        results["loader_hd_clips_per_s"] = _loader_rate(hd, get_reader("pyav"), cfg, sizes["hd_batches"],
                                                          min_seconds=sizes["loader_seconds"])
        results["loader_hd_full_size_decode_clips_per_s"] = _loader_rate(hd, get_reader("pyav"), cfg, sizes["hd_batches"], decoder_scaling=False,
                                                                         min_seconds=sizes["loader_seconds"])
    results["cached_over_online"] = results["dtg_cached_step_s"] / results["dtg_online_step_s"]
    results["fast_over_naive"] = results["loader_fast_clips_per_s"] / results["loader_naive_clips_per_s"]
    results["device"] = dev
    results["threads"] = torch.get_num_threads()
    results["config"] = {"quick": quick, "batch_videos": cfg.optim.batch_size, "views": 2, **{
        k: v for k, v in to_dict(cfg).items() if k in ("data", "student", "teachers")}}
    return results


def _hd_videos(root: Path, count: int, seconds: float):
    """``count`` generated 1280x720 25-fps clips as a one-class list: the loader on HD footage."""
    for i in range(count):
        write_pattern_video(root / f"hd{i}.mp4", seconds, 1280, 720)
    (root / "list.txt").write_text("".join(f"hd{i}.mp4 0\n" for i in range(count)))
    (root / "classes.txt").write_text("hd\n")
    return load_split(DataConfig(root=str(root), train_list=str(root / "list.txt"),
                                 classes=str(root / "classes.txt")), "train")


def _plan(sizes):
    from .recipes import Sizes

    return Sizes("bench", sizes["frames"], sizes["size"], sizes["batch"], 1, 1, 1, sizes["teacher_input"])


def format_table(r: dict) -> str:
    rows = [("student-only step", f"{r['student_step_s'] * 1000:.0f} ms"),
            ("DTG step, online teachers", f"{r['dtg_online_step_s'] * 1000:.0f} ms"),
            ("DTG step, cached teachers", f"{r['dtg_cached_step_s'] * 1000:.0f} ms"),
            ("cached / online", f"{r['cached_over_online']:.2f}"),
            ("loader, PyAV per sample", f"{r['loader_naive_clips_per_s']:.1f} clips/s"),
            ("loader, prepared uint8 frames", f"{r['loader_fast_clips_per_s']:.1f} clips/s"),
            ("fast / naive", f"{r['fast_over_naive']:.1f}x"),
            ("colour of a batch, on the device", f"{r['colour_ms_per_batch']:.1f} ms"),
            ("loader, 1280x720 PyAV per sample", f"{r['loader_hd_clips_per_s']:.1f} clips/s"),
            ("  same, full-size decode", f"{r['loader_hd_full_size_decode_clips_per_s']:.1f} clips/s")]
    width = max(len(a) for a, _ in rows)
    head = f"device {r['device']}, {r['threads']} threads, batch {r['config']['batch_videos']} videos x 2 views"
    return "\n".join([head] + [f"{a:<{width}}  {b:>14}" for a, b in rows])
