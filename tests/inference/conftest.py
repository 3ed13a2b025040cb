"""Students to apply: one fine-tuned on two classes a single frame tells apart (red and blue scenes), so a
timeline has a right answer, and the videos it was trained and tested on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtgnet.data.synth import write_mp4
from tests.conftest import tiny_cfg

CLASSES = ("red", "blue")
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
    (root / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
    for s, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        lines = []
        for c, colour in enumerate(CLASSES):
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
