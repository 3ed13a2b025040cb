"""Training recipes shared by `dtgnet demo`, `dtgnet study` and `dtgnet bench`: the configs they build for
SynthActions (sizes, schedules, learning rates) and their output-directory handling."""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, TeacherConfig, validate
from ..errors import DtgError


@dataclass(frozen=True)
class Sizes:
    """How big a SynthActions run is: the data preset, the student's input and each stage's length."""

    preset: str
    frames: int
    size: int
    batch_size: int
    pretrain_epochs: int
    finetune_epochs: int
    single_frame_epochs: int
    teacher_input: int
    label_fraction: float = 0.1
    max_steps: int = 0
    """Cap on every training run's steps (0: none); only smoke-sized runs set it."""


def fresh_out_dir(out, force: bool) -> Path:
    """``out`` as an empty directory; an existing non-empty one needs ``force``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DtgError(f"{out}: exists and is not empty; pass --force to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def synth_teachers(sizes: Sizes, action_path: str, weights: tuple[float, float] = (1.0, 1.0)) -> list[TeacherConfig]:
    """The two SynthActions teachers (bundled ImageNet EfficientNet-Lite0, the action teacher); a teacher
    whose weight is 0 is left out."""
    both = [TeacherConfig("imagenet", "efficientnet_lite0", "", weights[0], sizes.teacher_input),
            TeacherConfig("action", "action", action_path, weights[1], sizes.teacher_input)]
    return [t for t in both if t.weight > 0]


def base_config(data_dir: Path, sizes: Sizes, seed: int) -> Config:
    cfg = Config()
    d = cfg.data
    d.format, d.root = "list", str(data_dir)
    d.train_list, d.val_list, d.test_list = (str(data_dir / f"{s}.txt") for s in ("train", "val", "test"))
    d.classes = str(data_dir / "classes.txt")
    d.frames, d.size, d.flip = sizes.frames, sizes.size, False  # a flip would swap cw/ccw and left/right
    d.eval_clips = 2
    cfg.student.arch, cfg.student.temporal_shift = "tsn_r18", True  # order matters in SynthActions
    cfg.optim.batch_size, cfg.optim.max_steps = sizes.batch_size, sizes.max_steps
    cfg.run.seed, cfg.run.log_every = seed, 5
    cfg.run.teacher_cache = True  # teachers embed each training frame once instead of every view
    return cfg


def pretrain_config(base: Config, runs: Path, name: str, teachers: list[TeacherConfig], sizes: Sizes) -> Config:
    cfg = copy.deepcopy(base)
    cfg.teachers = teachers
    cfg.optim.epochs, cfg.optim.lr, cfg.optim.warmup_steps = sizes.pretrain_epochs, 2e-3, 10
    cfg.run.out = str(runs / name)
    validate(cfg)
    return cfg


def finetune_config(base: Config, runs: Path, name: str, sizes: Sizes, frames: int | None = None,
                    label_fraction: float | None = None, epochs: int | None = None) -> Config:
    cfg = copy.deepcopy(base)
    cfg.teachers = []
    cfg.data.label_fraction = sizes.label_fraction if label_fraction is None else label_fraction
    if frames is not None:
        cfg.data.frames = frames
        cfg.student.temporal_shift = frames > 1
    cfg.optim.epochs = epochs or sizes.finetune_epochs
    cfg.optim.batch_size = 8
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-3, 5
    cfg.run.out = str(runs / name)
    validate(cfg)
    return cfg
