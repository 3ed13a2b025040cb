"""Shared fixtures: tiny real mp4 videos (written with PyAV), salted bad files, a tiny SynthActions set."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from dtgnet.config import load_config
from dtgnet.data.synth import SynthPreset, generate, write_mp4

REAL_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_clips"
UCF_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucf101_splits"
TINY = SynthPreset(pairs=2, train_per_class=6, val_per_class=2, test_per_class=3, stills_per_class=6,
                   frames=8, size=32)

# DTGNET_TEST_THREADS=1 for runners that fork after the tests started (mutmut): a forked OpenMP pool deadlocks
torch.set_num_threads(int(os.environ.get("DTGNET_TEST_THREADS", min(2, os.cpu_count() or 1))))


def tiny_overrides(root, out, **extra):
    base = {"data.root": root, "data.train_list": f"{root}/train.txt", "data.val_list": f"{root}/val.txt",
            "data.test_list": f"{root}/test.txt", "data.classes": f"{root}/classes.txt", "data.frames": 2,
            "data.size": 32, "data.flip": False, "data.eval_clips": 2, "optim.batch_size": 4, "optim.epochs": 1,
            "optim.max_steps": 2, "run.out": out, "run.log_every": 1, "student.proj_hidden": 32,
            "student.proj_dim": 16, "teachers.0.input_size": 32, "student.temporal_shift": True}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_cfg(root, out, **extra):
    return load_config(None, tiny_overrides(root, out, **extra))


def wrap_dtg_loss(monkeypatch, before=None, after=None) -> dict:
    """Wrap the loss every training step calls: ``before(n)`` runs ahead of the n-th call, ``after(n, result)``
    on its result. Returns the call counter ``{"n": calls}``."""
    import dtgnet.objectives.objective as objective

    real, calls = objective.dtg_loss, {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if before:
            before(calls["n"])
        result = real(*args, **kwargs)
        if after:
            after(calls["n"], result)
        return result

    monkeypatch.setattr(objective, "dtg_loss", wrapped)
    return calls


def signal_in_step(monkeypatch, step: int, sig=signal.SIGUSR1) -> dict:
    """This process receives ``sig`` inside the loss of training step ``step`` (1-based), as a scheduler's
    notice arrives mid-step."""
    return wrap_dtg_loss(monkeypatch, before=lambda n: n == step and os.kill(os.getpid(), sig))


def moving_square(frames: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured square sliding right; frame t differs visibly from frame t+1."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 255, size=(10, 10, 3), dtype=np.uint8)
    out = np.full((frames, size, size, 3), 40, np.uint8)
    for t in range(frames):
        x = 2 + 2 * t
        out[t, 10:20, x:x + 10] = tex
    return out


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, TINY, seed=0, progress=False)
    return root


@pytest.fixture()
def video_dir(tmp_path) -> Path:
    """root/ with 4 good videos in 2 class folders, the salted bad files, and a list naming all of them."""
    root = tmp_path / "videos"
    for c in ("walk", "run"):
        for i in range(2):
            write_mp4(root / c / f"{c}{i}.mp4", moving_square(seed=i + (10 if c == "run" else 0)))
    good = root / "walk" / "walk0.mp4"
    data = good.read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "empty.mp4").write_bytes(b"")
    (root / "bad" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "bad" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    lines = ["walk/walk0.mp4 0", "walk/walk1.mp4 0", "run/run0.mp4 1", "run/run1.mp4 1"]
    (tmp_path / "good.txt").write_text("\n".join(lines) + "\n")
    bad = ["bad/empty.mp4 0", "bad/truncated.mp4 0", "bad/garbage.mp4 1", "bad/missing.mp4 1",
           "walk/walk0.mp4 7", "../outside.mp4 0"]
    (tmp_path / "all.txt").write_text("\n".join(lines + bad) + "\n")
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    return root


# ---------------------------------------------------------------- a student with a right answer
# One fine-tuned on two classes a single frame tells apart (red and blue scenes), so a timeline or a probe has a
# right answer, and the videos it was trained and tested on.
COLOURS = ("red", "blue")
FPS = 10


def scene(colour: str, frames: int, seed: int) -> np.ndarray:
    """uint8 (T, 48, 64, 3): a noisy scene dominated by one colour, with a block moving across it."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 90, size=(frames, 48, 64, 3)).astype(np.uint8)
    video[..., 0 if colour == "red" else 2] += 150
    for t in range(frames):
        x = (t * 5) % 48
        video[t, 16:32, x:x + 16] = 255
    return video


@pytest.fixture(scope="session")
def colours(tmp_path_factory) -> Path:
    """train / val / test lists of red and blue videos (1 s at 10 fps), and classes.txt."""
    root = tmp_path_factory.mktemp("colours")
    (root / "classes.txt").write_text("".join(c + "\n" for c in COLOURS))
    for s, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        lines = []
        for c, colour in enumerate(COLOURS):
            for i in range(n):
                rel = f"{split}/{colour}_{i}.mp4"
                write_mp4(root / rel, scene(colour, FPS, seed=100 * s + 10 * c + i), fps=FPS)
                lines.append(f"{rel} {c}\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="session")
def colour_student(colours, tmp_path_factory) -> Path:
    """student.safetensors of a TSN student fine-tuned on the colour videos."""
    from dtgnet.training import train

    out = tmp_path_factory.mktemp("colour_run") / "run"
    # no colour jitter or grayscale: colour is the class here
    train(tiny_cfg(colours, out, **{"optim.max_steps": 60, "optim.epochs": 30, "optim.warmup_steps": 5,
                                    "data.strong_aug": False, "data.label_fraction": 1.0}), "finetune", progress=False)
    return out / "student.safetensors"


def stitched(path: Path, seconds_each: int = 4) -> Path:
    """A red scene for ``seconds_each`` seconds, then a blue one: one file, one seam."""
    frames = seconds_each * FPS
    write_mp4(path, np.concatenate([scene("red", frames, 1), scene("blue", frames, 2)]), fps=FPS)
    return path
