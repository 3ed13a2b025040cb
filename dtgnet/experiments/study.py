"""`dtgnet study`: does differentiated teacher guidance help, by how much, and which weighting wins.

The data, the action teacher, a prepared memory map and both teachers' feature caches are made once; then
every entry is trained with each seed (the seed sets initialisation, sampling, augmentation and which 10 %
of the training videos carry labels) and scored on the test split:

* ``top1``: video-level top-1 after training on 10 % of the labels. Pre-training entries (``ssl``,
  ``dtg_*``) are fine-tuned with the same recipe as ``scratch``; ``single_frame`` is ``scratch`` given one
  frame; ``supervised`` and ``joint_dtg`` share the joint recipe (mode ii, end to end on the labelled
  videos), the first with cross-entropy only, the second with ``CE + L_DTG``.
* The paper's other protocols: ``scratch_full`` is the ceiling (supervised from scratch on 100 % of the
  labels); ``ssl_full`` and ``dtg_full`` fine-tune the ``ssl`` and ``dtg_adaptive`` students on 100 % of the
  labels; ``ssl_1ofK`` / ``dtg_1ofK`` pre-train on 1/K of the unlabelled training videos (the same number of
  steps, so they differ in data, not compute), then fine-tune on the usual 10 % of the labels.
* ``knn`` / ``r1``: weighted kNN top-1 and retrieval R@1 (test queries, training videos as the gallery) of
  the entry's representation before any label is used where it has one (the pre-trained student), else of
  the trained student. ``teacher_knn_<name>`` entries are the teachers' own pooled frame features; their
  ``top1`` is that kNN top-1.

Every choice is made on the val split: ``dtg_best_fixed`` is the weight-grid point with the best mean val
top-1, and the DTG variant the targets are checked against is the best DTG entry on val. The headline entries
run with every seed, the others (grid points, learned weights, single frame, the ViT pair) with the first
``side_seeds``; a comparison pairs the seeds both entries have.

The study resumes: each stage and each (entry, seed) writes its record once, and ``--resume`` skips what
has a record; a run that a preemption or a kill stopped continues from its last checkpoint. ``--interim``
writes the report from the seeds that have finished every entry, training nothing: a study of several hours
can be read while it runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, TeacherConfig, load_config, validate
from ..data.lists import load_split
from ..data.prepare import prepare, prepared_size
from ..data.synth import design_preset, generate
from ..data.video import get_reader
from ..errors import CheckpointError, DtgError
from ..evaluation import eval_dataset, evaluate_model, extract, extract_teacher, frozen_feature_scores
from ..io import write_json_atomic
from ..students import load_student
from ..teachers import build_teacher, train_action_teacher
from ..teachers.cache import cache_teachers
from ..training import pick_device, train
from ..training.runlog import RunDirError
from .recipes import Sizes, base_config, finetune_config, fresh_out_dir, pretrain_config, synth_teachers
from .stats import (
    appearance_ratio,
    best_on_val,
    check_targets,
    entry_stats,
    fraction_name,
    grid_name,
    token_name,
)

TEACHERS = ("imagenet", "action")
VIT_STUDENT = ("student.arch=vit_t", "student.patch_size=8", "student.tubelet=2")
"""The ViT pair's student: ViT-Ti, 2x8x8 tubelets (2 x 4 x 4 tokens at the study's 4 frames of 32x32)."""
TOKENS_ALONE = ("loss.token_weight=1", "loss.clip_weight=0", "loss.self_weight=0")
"""UMT's objective: masked token distillation, no clip-level term."""
DTG_TOKEN = ("loss.token_weight=1", "student.mask_ratio=0.75")
"""The paper's clip-level terms and masked token distillation together, at UMT's share of hidden tubelets."""
DTG_MASKED = ("student.mask_ratio=0.75",)
"""``vit_dtg_token`` without its token term: the mask also thins the tokens the clip terms pool, so this is
the control that isolates what the token term adds."""
INIT_STUDENT = ("student.arch=tsn", "student.backbone=efficientnet_lite0", "student.init_from=bundled",
                "student.temporal_shift=false")
"""The initialised student of ``*_init``: TSN over EfficientNet-Lite0 with the ImageNet teacher's own weights."""


@dataclass(frozen=True)
class StudyPlan:
    sizes: Sizes
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    side_seeds: int = 3
    """Entries outside the headline (weight-grid points, learned weights, single frame, the ViT pair) run with
    the first this many seeds."""
    full_label_epochs: int = 10
    """Fine-tune epochs with 100 % of the labels (ten times the videos of the 10 % runs); 0 leaves the
    full-label entries out."""
    video_fractions: tuple[float, ...] = (0.125, 0.25, 0.5)
    """Data efficiency: fractions of the unlabelled training videos ``ssl`` and ``dtg_adaptive`` are also
    pre-trained on."""
    grid: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.5), (0.5, 1.0))
    """Fixed (imagenet, action) teacher weights tried for dtg_best_fixed."""
    finetune_lr: float = 1e-3
    """Fine-tune learning rate of the backbone (the classifier's is ``head_lr_scale`` times it)."""
    finetune_head_lr_scale: float = 1.0
    joint_unlabelled: bool = False
    """Joint entries train on the labelled videos only, with the fine-tune recipe; true: the DTG term trains
    on every training video and cross-entropy on the labelled half of each batch (``data.joint_unlabelled``,
    ``joint_epochs`` passes over the unlabelled videos at the pre-training batch)."""
    joint_epochs: int = 4
    """Joint epochs (passes over the unlabelled videos) when ``joint_unlabelled``."""
    token_ratios: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Mask ratios of the ``vit_token_mNN`` entries (masked token distillation alone, a ViT student), each
    run on the first seed; the best of them on val there (``vit_token``) runs on the other side seeds too."""
    long_pretrain_epochs: int = 0
    """Also pre-train ``ssl`` and ``dtg_adaptive`` this many epochs (entries ``ssl_eN`` and ``dtg_eN``, headline);
    0 leaves them out. ``dtg_eN`` is one of the DTG variants val chooses among, and the DTG entry is held
    against the better of the two SSL schedules on val."""
    overrides: tuple[str, ...] = ()
    """Dotted ``key=value`` config overrides applied to every run: a study of a method change."""
    design: str = "twins"
    """SynthActions' design (``twins``: classes told apart by motion alone, SSv2-like; ``ucf_like``: by
    appearance more often than by motion, UCF101-like), at the size of ``sizes.preset``."""
    entries: tuple[str, ...] = ()
    """The entries to run (names of :func:`entry_names`); empty: every one. ``dtg_best_fixed`` comes with the
    weight-grid points, and ``ssl_full`` / ``dtg_full`` bring ``ssl`` / ``dtg_adaptive``."""

    def describe(self) -> dict:
        return {"sizes": self.sizes.__dict__, "seeds": list(self.seeds), "side_seeds": self.side_seeds,
                "full_label_epochs": self.full_label_epochs, "video_fractions": list(self.video_fractions),
                "grid": [list(w) for w in self.grid],
                "finetune_lr": self.finetune_lr, "finetune_head_lr_scale": self.finetune_head_lr_scale,
                "joint_unlabelled": self.joint_unlabelled, "joint_epochs": self.joint_epochs,
                "long_pretrain_epochs": self.long_pretrain_epochs, "overrides": list(self.overrides),
                "token_ratios": list(self.token_ratios),
                "design": self.design, "entries": list(self.entries)}

    def long_names(self) -> list[str]:
        """``[ssl_eN, dtg_eN]``, or none without a long schedule."""
        n = self.long_pretrain_epochs
        return [f"ssl_e{n}", f"dtg_e{n}"] if n else []


ADDITIVE_PLAN_KEYS = ("long_pretrain_epochs", "entries", "token_ratios")
"""Plan fields that only choose entries: a study resumes under a plan that differs from its own in these
alone, and trains what they add (a calibration run of two entries grows into the whole study)."""


PLANS = {
    # smoke size: the headline entries with two seeds (the fewest an interval needs), the side entries with
    # one, three weight-grid points, two steps each (CI checks the outputs, not the numbers)
    "quick": StudyPlan(Sizes("smoke", frames=4, size=32, batch_size=16, pretrain_epochs=1, finetune_epochs=2,
                             single_frame_epochs=2, teacher_input=64, label_fraction=0.5, max_steps=2),
                       seeds=(0, 1), side_seeds=1, grid=((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)), full_label_epochs=1, video_fractions=(0.5,), joint_unlabelled=True,
                       joint_epochs=1, long_pretrain_epochs=2, token_ratios=(0.75,)),
    # chosen on val (docs/results, "What was tried"): 16 pre-training epochs over 8; joint training with the
    # DTG term on the unlabelled videos too, 12 passes over them. 64 epochs besides: students pre-trained on
    # 1/8 of the videos for as many steps (128 passes each) beat those of all videos on val
    "full": StudyPlan(Sizes("study", frames=4, size=32, batch_size=24, pretrain_epochs=16, finetune_epochs=30,
                            single_frame_epochs=30, teacher_input=96), joint_unlabelled=True, joint_epochs=12,
                      long_pretrain_epochs=64),
}
# the UCF101-like benchmark: what its comparison needs (issue: a budget like the first study's), the set-up
# shared by all; ssl (16 epochs) stays as the same-steps baseline of dtg_1of4
PLANS["ucf_like_full"] = dataclasses.replace(
    PLANS["full"], design="ucf_like", video_fractions=(0.25,),
    entries=("scratch", "ssl", "ssl_e64", "dtg_e64", "supervised", "joint_dtg", "scratch_full", "ssl_1of4",
             "dtg_1of4", "single_frame", "single_frame_full", "vit_ssl", "vit_dtg", "vit_token_m50",
             "vit_token_m75", "vit_token_m90", "vit_dtg_token", "vit_dtg_masked", "dtg_video", "scratch_init",
             "ssl_init", "dtg_init", "teacher_knn_imagenet", "teacher_knn_action"))
PLANS["ucf_like_quick"] = dataclasses.replace(  # quick's schedule and its one fraction of the videos, 1/2
    PLANS["quick"], design="ucf_like",
    entries=tuple(e.replace("_e64", "_e2").replace("_1of4", "_1of2") for e in PLANS["ucf_like_full"].entries
                  if e not in ("vit_token_m50", "vit_token_m90")))
FULL_FINETUNES = {"ssl_full": "ssl", "dtg_full": "dtg_adaptive"}
"""Entries that fine-tune another entry's pre-trained student on 100 % of the labels (one pre-training, two
fine-tunes)."""
SIDE_ENTRIES = ("dtg_learned", "single_frame", "vit_ssl", "vit_dtg", "scratch_init", "ssl_init", "dtg_init",
                "vit_dtg_token", "vit_dtg_masked", "dtg_video")
"""Run with ``side_seeds`` seeds, like the weight-grid points."""


def all_entry_names(plan: StudyPlan) -> list[str]:
    """Every entry a plan of this shape can have, in table order."""
    fixed = [grid_name(w) for w in plan.grid]
    fewer = [fraction_name(k, f) for f in plan.video_fractions for k in ("ssl", "dtg")]
    tokens = [token_name(r) for r in plan.token_ratios]
    full = ["scratch_full", "ssl_full", "dtg_full"] if plan.full_label_epochs else []
    single = ["single_frame", "single_frame_full"] if plan.full_label_epochs else ["single_frame"]
    long = plan.long_names()
    return (["scratch", "ssl", *long[:1], *fixed[:3], "dtg_best_fixed", *fixed[3:], "dtg_learned", "dtg_adaptive",
             *long[1:], "supervised", "joint_dtg", *full, *fewer, *single, "vit_ssl", "vit_dtg",
             *tokens, "vit_token", "vit_dtg_token", "vit_dtg_masked",
             *(["dtg_video"] if long else []), "scratch_init", "ssl_init", "dtg_init"]
            + [f"teacher_knn_{t}" for t in TEACHERS])


def side_entries(plan: StudyPlan) -> set[str]:
    """The entries a plan of this shape runs with ``side_seeds`` seeds (the rest run every seed)."""
    return {grid_name(w) for w in plan.grid} | {token_name(r) for r in plan.token_ratios} | set(SIDE_ENTRIES)


def entry_names(plan: StudyPlan) -> list[str]:
    """Every name study.json holds, in table order: the plan's entries and those derived from them."""
    names = all_entry_names(plan)
    if not plan.entries:
        return names
    unknown = sorted(set(plan.entries) - set(names))
    if unknown:
        raise DtgError(f"unknown study entries: {', '.join(unknown)} (known: {', '.join(names)})")
    chosen = set(plan.entries)
    if chosen & {grid_name(w) for w in plan.grid}:
        chosen.add("dtg_best_fixed")
    if chosen & {token_name(r) for r in plan.token_ratios}:
        chosen.add("vit_token")
    for derived, source in FULL_FINETUNES.items():
        if derived in chosen:
            chosen.add(source)
    return [n for n in names if n in chosen]


def same_steps(epochs: int, batch: int, every: int, kept: int, max_steps: int) -> tuple[int, int]:
    """``(epochs, max_steps)`` that train on ``kept`` videos for as many steps as ``epochs`` over ``every``
    videos do (whole batches only, as the loader drops the last partial one); ``max_steps``: an existing cap
    (0: none)."""
    steps = epochs * (every // batch)
    return math.ceil(steps / max(1, kept // batch)), min(max_steps or steps, steps)


# ------------------------------------------------------------------------------------------ statistics

class Study:
    def __init__(self, out: Path, plan: StudyPlan, progress: bool, knn_queries: str = "test"):
        self.out, self.plan, self.sizes, self.progress = out, plan, plan.sizes, progress
        self.knn_queries = knn_queries  # the split whose videos query the training gallery (val in probes)
        self.data_dir, self.runs = out / "data", out / "runs"
        self.device = pick_device("auto")
        self.timings: dict[str, float] = {}

    def finished(self, name: str) -> bool:
        return (self.out / "records" / f"{name}.json").is_file()

    def record(self, name: str, fn):
        """``fn()``'s JSON result, computed once: stored under ``records/`` with its time, reused on resume.

        The time includes earlier attempts that an error or a preemption stopped (kept in ``NAME.spent``),
        since a resumed run continues from their checkpoints; a process killed outright loses its attempt's."""
        path = self.out / "records" / f"{name}.json"
        if not path.is_file():
            spent = path.with_suffix(".spent")
            earlier = float(spent.read_text()) if spent.is_file() else 0.0
            t0 = time.time()
            try:
                result = fn()
            except BaseException:
                spent.write_text(f"{earlier + time.time() - t0:.1f}\n")
                raise
            seconds = earlier + time.time() - t0
            write_json_atomic(path, {"seconds": round(seconds, 1), "result": result})
            spent.unlink(missing_ok=True)
            if self.progress:
                print(f"study: {name} done in {seconds:.0f} s", flush=True)
        stored = json.loads(path.read_text())
        self.timings[name] = stored["seconds"]
        return stored["result"]

    # ---------------------------------------------------------------- shared set-up
    def setup(self) -> None:
        s = self.sizes
        preset = design_preset(s.preset, self.plan.design)
        self.synth = self.record("synth", lambda: generate(self.data_dir, preset, 0, self.progress))
        self.action = self.record("action_teacher", lambda: train_action_teacher(
            self.data_dir / "stills", self.out / "teachers" / "action.safetensors", input_size=s.teacher_input,
            seed=0, progress=self.progress))
        size = prepared_size(s.size)
        self.record("prepare", lambda: {k: v for k, v in prepare(self._lists(), get_reader("pyav"),
                                                                   self.out / "prepared", size,
                                                                   self.progress).items() if k != "bad"})

        def caches():  # teachers embed the original frames, not the student's downsized copy
            _, videos = cache_teachers(synth_teachers(s, self.action["path"]), self._lists()[0], s.frames, s.size,
                                       self.out / "teacher_cache", self.device, get_reader("pyav"),
                                       progress=self.progress)
            return {"teachers": list(TEACHERS), "videos": videos}

        self.record("teacher_cache", caches)

    def _lists(self) -> list:
        data = base_config(self.data_dir, self.sizes, 0).data
        return [load_split(data, subset) for subset in ("train", "val", "test")]

    def base(self, seed: int, student: tuple[str, ...] = ()) -> Config:
        cfg = base_config(self.data_dir, self.sizes, seed)
        cfg.data.prepared = str(self.out / "prepared")
        cfg.run.teacher_cache, cfg.run.teacher_cache_dir = False, str(self.out / "teacher_cache")
        overrides = [*student, *self.plan.overrides]
        return load_config(None, overrides, base=cfg) if overrides else cfg

    def _labelled_config(self, base: Config, name: str, frames: int | None = None, all_labels: bool = False
                         ) -> Config:
        """The fine-tune recipe with the plan's learning rates (fine-tune, scratch and joint entries);
        ``all_labels``: on 100 % of the labels, for the plan's ``full_label_epochs``."""
        cfg = finetune_config(base, self.runs, name, self.sizes, frames=frames,
                              label_fraction=1.0 if all_labels else None,
                              epochs=self.plan.full_label_epochs if all_labels else None)
        cfg.optim.lr, cfg.optim.head_lr_scale = self.plan.finetune_lr, self.plan.finetune_head_lr_scale
        return cfg

    def _train(self, cfg: Config, mode: str, init: str | None = None) -> dict:
        """Train a run of the study's; one that an interruption stopped continues from its last checkpoint
        (exactly as if uninterrupted), anything else in its directory (another config's run) is cleared."""
        try:
            return train(cfg, mode, init, resume="auto", progress=self.progress)
        except (RunDirError, CheckpointError) as e:
            print(f"study: starting {cfg.run.out} over: {e}", flush=True)
            return train(cfg, mode, init, force=True, progress=self.progress)

    def _finetune(self, base: Config, name: str, init: str | None, frames: int | None = None,
                  all_labels: bool = False) -> Config:
        cfg = self._labelled_config(base, name, frames, all_labels)
        validate(cfg)
        self._train(cfg, "finetune", init)
        return cfg

    def _trained(self, cfg: Config):
        return load_student(Path(cfg.run.out) / "student.safetensors", self.device)

    def _classification(self, model, cfg: Config) -> dict:
        return {subset: evaluate_model(model, cfg, "finetune", self.device, test_subset=subset)["video_top1"]
                for subset in ("val", "test")}

    def _representation(self, model, cfg: Config) -> dict:
        train_f, test_f = (extract(model, eval_dataset(cfg, subset, model.temporal), self.device)
                           for subset in ("train", self.knn_queries))
        scores = frozen_feature_scores(train_f, test_f)
        return {"knn": scores["knn_top1"], "r1": scores["R@1"]}

    def _scored(self, cfg: Config) -> dict:
        """Classification and representation scores of a run trained with labels, then its weights go."""
        model = self._trained(cfg)
        cls, rep = self._classification(model, cfg), self._representation(model, cfg)
        self._tidy(cfg)
        return {**rep, "top1": cls["test"], "val_top1": cls["val"]}

    def _tidy(self, cfg: Config, keep_student: bool = False) -> None:
        """Keep a run's logs and config; its checkpoints and weights are not needed once it is scored (unless
        ``keep_student``: a later entry's teacher)."""
        run = Path(cfg.run.out)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        if not keep_student:
            (run / "student.safetensors").unlink(missing_ok=True)

    def pretrain_entry(self, name: str, seed: int, teachers, weighting: str = "fixed",
                       student: tuple[str, ...] = (), all_labels: bool = False, video_fraction: float = 1.0,
                       epochs: int = 0, pretrain: tuple[str, ...] = (), probes: bool = False) -> dict:
        """Pre-train (on ``video_fraction`` of the training videos; ``epochs``: other than the plan's;
        ``pretrain``: overrides of the pre-training config; teacher tokens and video teachers run online beside
        the image teachers' cache), score the label-free representation (``probes``: also the linear and attentive probes on the
        frozen student), fine-tune on 10 % of the labels (and, ``all_labels``, on 100 %: ``full_top1``,
        ``full_val_top1``)."""
        base = self.base(seed, student)
        pre = pretrain_config(base, self.runs, f"{name}_s{seed}_pretrain", teachers, self.sizes)
        pre.loss.weighting = weighting
        pre.optim.epochs = epochs or pre.optim.epochs
        if pretrain:
            pre = load_config(None, list(pretrain), base=pre)
        if video_fraction < 1:  # fewer videos, as many steps: the entries differ in data, not in compute
            subset, kept, every = self._video_subset(seed, video_fraction)
            pre.data.train_list = str(subset)
            o = pre.optim
            o.epochs, o.max_steps = same_steps(o.epochs, o.batch_size, every, kept, o.max_steps)
        validate(pre)
        metrics = self._train(pre, "pretrain")
        weights = str(Path(pre.run.out) / "student.safetensors")
        rep = self._representation(self._trained(pre), base)  # label-free; every training video is the gallery
        if probes:
            rep.update(self._probes(self._trained(pre), base))
        record = {**self._scored(self._finetune(base, f"{name}_s{seed}_finetune", weights)), **rep,
                  "teacher_weights": metrics.get("teacher_weights"), "pretrain_loss": metrics.get("final_loss")}
        if all_labels:
            full = self._finetune(base, f"{name}_s{seed}_full", weights, all_labels=True)
            scores = self._classification(self._trained(full), full)
            self._tidy(full)
            record.update(full_top1=scores["test"], full_val_top1=scores["val"])
        keep = [name] == self.plan.long_names()[1:] and "dtg_video" in entry_names(self.plan)
        self._tidy(pre, keep_student=keep)
        return record

    def video_teacher(self, seed: int) -> TeacherConfig:
        """``dtg_video``'s video teacher: the student ``dtg_eN`` pre-trained from the same seed (kept after
        that entry was scored)."""
        name = self.plan.long_names()[1]
        path = self.runs / f"{name}_s{seed}_pretrain" / "student.safetensors"
        if not path.is_file():
            raise DtgError(f"{path}: dtg_video's video teacher is missing (the {name} entry of seed {seed} keeps "
                           f"it); delete records/{name}_s{seed}.json to train it again")
        return TeacherConfig("video", "student", str(path))

    def _probes(self, model, cfg: Config) -> dict:
        """Linear and attentive probes on the frozen student (every training label, test split), as
        ``dtgnet eval --protocol linear|attentive`` scores it."""
        return {f"{p}_probe": evaluate_model(model, cfg, p, self.device)["top1"] for p in ("linear", "attentive")}

    def _video_subset(self, seed: int, fraction: float) -> tuple[Path, int, int]:
        """A training list of ``fraction`` of every class's videos, drawn with ``seed``, and its and the full
        list's lengths; the fractions of one seed are nested (1/8 inside 1/4 inside 1/2), so the curve
        measures more data, not other data."""
        train_list = self.data_dir / "train.txt"
        lines = train_list.read_text().splitlines()
        labels = np.array([int(line.rsplit(maxsplit=1)[1]) for line in lines])
        keep = []
        for c in np.unique(labels):
            members = np.random.default_rng([seed, 8191, int(c)]).permutation(np.flatnonzero(labels == c))
            keep.extend(members[:max(1, round(fraction * len(members)))])
        path = self.out / "lists" / f"train_{fraction_name('videos', fraction)}_s{seed}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines[i] + "\n" for i in sorted(keep)))
        return path, len(keep), len(lines)

    def scratch_entry(self, name: str, seed: int, frames: int | None = None, all_labels: bool = False,
                      student: tuple[str, ...] = ()) -> dict:
        return self._scored(self._finetune(self.base(seed, student), f"{name}_s{seed}", None, frames, all_labels))

    def joint_entry(self, name: str, seed: int, dtg: bool) -> dict:
        cfg = self._labelled_config(self.base(seed), f"{name}_s{seed}")
        cfg.teachers = synth_teachers(self.sizes, self.action["path"])
        cfg.loss.joint_lambda = 1.0 if dtg else 0.0  # the same runs, views and steps; only L_DTG differs
        if self.plan.joint_unlabelled:
            cfg.data.joint_unlabelled = True
            cfg.optim.batch_size, cfg.optim.epochs = self.sizes.batch_size, self.plan.joint_epochs
        validate(cfg)
        self._train(cfg, "joint")
        return self._scored(cfg)

    def teacher_entry(self, teacher_name: str) -> dict:
        """kNN / R@1 on a teacher's own features of the original frames (deterministic: scored once)."""
        cfg = base_config(self.data_dir, self.sizes, 0)
        cfg.data.size = self.sizes.teacher_input
        tc = next(t for t in synth_teachers(self.sizes, self.action["path"]) if t.name == teacher_name)
        teacher = build_teacher(tc).to(self.device)
        train_f, test_f = (extract_teacher(teacher, eval_dataset(cfg, subset, "segments"), self.device,
                                           progress=self.progress, desc=f"{teacher_name} teacher, {subset}")
                           for subset in ("train", "test"))
        scores = frozen_feature_scores(train_f, test_f)
        return {"knn": scores["knn_top1"], "r1": scores["R@1"], "top1": scores["knn_top1"]}

    def run_seed(self, seed: int, only: list[str] | None = None) -> dict[str, dict]:
        """Every entry's record for ``seed`` (``only``: just those entries; a side entry past the side seeds
        has none)."""
        jobs, known = self._jobs(seed), self._jobs(self.plan.seeds[0])  # the first seed runs every entry
        unknown = set(only or []) - set(known)
        if unknown:
            raise DtgError(f"unknown study entries: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
        return {name: self.record(f"{name}_s{seed}", job) for name, job in jobs.items() if not only or name in only}

    def seed_finished(self, seed: int) -> bool:
        """Whether every entry of ``seed`` has its record."""
        return all(self.finished(f"{name}_s{seed}") for name in self._jobs(seed))

    def _jobs(self, seed: int) -> dict:
        """The entries ``seed`` trains, each as a function returning its record; past the plan's first
        ``side_seeds`` seeds, the headline entries only."""
        s, action, plan = self.sizes, self.action["path"], self.plan
        full = plan.full_label_epochs > 0
        names = entry_names(plan)
        ssl_full, dtg_full = ("ssl_full" in names), ("dtg_full" in names)
        fewer = {}
        for f in plan.video_fractions:
            fewer[fraction_name("ssl", f)] = lambda f=f: self.pretrain_entry(fraction_name("ssl", f), seed, [],
                                                                             video_fraction=f)
            fewer[fraction_name("dtg", f)] = lambda f=f: self.pretrain_entry(
                fraction_name("dtg", f), seed, synth_teachers(s, action), "adaptive", video_fraction=f)
        jobs = {
            "scratch": lambda: self.scratch_entry("scratch", seed),
            "ssl": lambda: self.pretrain_entry("ssl", seed, [], all_labels=ssl_full),
            **{grid_name(w): (lambda w=w: self.pretrain_entry(grid_name(w), seed, synth_teachers(s, action, w)))
               for w in plan.grid},
            "dtg_learned": lambda: self.pretrain_entry("dtg_learned", seed, synth_teachers(s, action), "learned"),
            "dtg_adaptive": lambda: self.pretrain_entry("dtg_adaptive", seed, synth_teachers(s, action), "adaptive",
                                                        all_labels=dtg_full),
            "supervised": lambda: self.joint_entry("supervised", seed, dtg=False),
            "joint_dtg": lambda: self.joint_entry("joint_dtg", seed, dtg=True),
            **fewer,
            "single_frame": lambda: self.scratch_entry("single_frame", seed, frames=1),
            "single_frame_full": lambda: self.scratch_entry("single_frame_full", seed, frames=1, all_labels=True),
            "vit_ssl": lambda: self.pretrain_entry("vit_ssl", seed, [], student=VIT_STUDENT, probes=True),
            "vit_dtg": lambda: self.pretrain_entry("vit_dtg", seed, synth_teachers(s, action), "adaptive",
                                                   student=VIT_STUDENT, probes=True),
            **{token_name(r): (lambda r=r: self.pretrain_entry(
                token_name(r), seed, synth_teachers(s, action), "adaptive", student=VIT_STUDENT,
                pretrain=(*TOKENS_ALONE, f"student.mask_ratio={r}"), probes=True))
               for r in plan.token_ratios},
            "vit_dtg_token": lambda: self.pretrain_entry("vit_dtg_token", seed, synth_teachers(s, action), "adaptive",
                                                         student=VIT_STUDENT, pretrain=DTG_TOKEN, probes=True),
            "vit_dtg_masked": lambda: self.pretrain_entry("vit_dtg_masked", seed, synth_teachers(s, action),
                                                          "adaptive", student=VIT_STUDENT, pretrain=DTG_MASKED,
                                                          probes=True),
            # one ImageNet-initialised student fine-tuned directly, after SSL and after DTG
            "scratch_init": lambda: self.scratch_entry("scratch_init", seed, student=INIT_STUDENT),
            "ssl_init": lambda: self.pretrain_entry("ssl_init", seed, [], student=INIT_STUDENT),
            "dtg_init": lambda: self.pretrain_entry("dtg_init", seed, synth_teachers(s, action), "adaptive",
                                                    student=INIT_STUDENT),
        }
        if full:
            jobs["scratch_full"] = lambda: self.scratch_entry("scratch_full", seed, all_labels=True)
        if plan.long_pretrain_epochs:  # last: a plan extended by them runs what it had planned first
            ssl_long, dtg_long = plan.long_names()
            jobs[ssl_long] = lambda: self.pretrain_entry(ssl_long, seed, [], epochs=plan.long_pretrain_epochs)
            jobs[dtg_long] = lambda: self.pretrain_entry(dtg_long, seed, synth_teachers(s, action), "adaptive",
                                                         epochs=plan.long_pretrain_epochs)
            # MVD's co-teaching: the image teachers (from the cache) and a video teacher (online), the student
            # that dtg_eN pre-trained from the same seed (after it: it needs that student)
            jobs["dtg_video"] = lambda: self.pretrain_entry(
                "dtg_video", seed, [*synth_teachers(s, action), self.video_teacher(seed)], "adaptive")
        jobs = {name: job for name, job in jobs.items() if name in names}  # the plan's (no full labels: fewer)
        side = side_entries(plan)
        if seed not in plan.seeds[:plan.side_seeds]:
            jobs = {name: job for name, job in jobs.items() if name not in side}
        if seed != plan.seeds[0]:  # the mask ratio is chosen on the first seed: only that one runs again
            chosen = self.chosen_token_entry()
            jobs = {name: job for name, job in jobs.items() if not name.startswith("vit_token_m") or name == chosen}
        return jobs

    def chosen_token_entry(self) -> str | None:
        """The ``vit_token_mNN`` entry with the best val top-1 on the plan's first seed, once every one of them
        has its record there (None before)."""
        first, names = self.plan.seeds[0], [token_name(r) for r in self.plan.token_ratios]
        if not names or not all(self.finished(f"{n}_s{first}") for n in names):
            return None
        val = {n: json.loads((self.out / "records" / f"{n}_s{first}.json").read_text())["result"]["val_top1"]
               for n in names}
        return max(names, key=val.get)


# ------------------------------------------------------------------------------------------ the study

def _note_growth(path: Path, command: str) -> None:
    """Add ``command``, which added entries to the study at ``path``'s folder, to the commands it records."""
    commands = json.loads(path.read_text()) if path.is_file() else {"command": ""}
    write_json_atomic(path, {**commands, "grown_by": [*commands.get("grown_by", []), command]})


def run_study(out, quick: bool = False, force: bool = False, resume: bool = False, progress: bool = True,
              plan: StudyPlan | None = None, command: str = "", interim: bool = False) -> dict:
    """Run (or with ``resume``, continue) the study in ``out`` and write its report. ``interim``: train
    nothing, and report on the seeds that have finished every entry so far (while the study runs on
    elsewhere, or after it stopped); the seed-independent teacher kNN entries are computed if missing."""
    from .reports import write_study_report

    plan = plan or PLANS["quick" if quick else "full"]
    load_config(None, plan.overrides, check_paths=False)  # a bad override or entry fails before any work
    entry_names(plan)
    out = Path(out)
    if resume or interim:
        stored = out / "records" / "plan.json"
        if not stored.is_file():
            raise DtgError(f"{out}: no study to {'report on' if interim else 'resume'} (no records/plan.json)")
        # a plan written before a field existed had that field's default
        old = {"design": StudyPlan.design, "entries": [], "token_ratios": list(StudyPlan.token_ratios),
               **json.loads(stored.read_text())}
        new = json.loads(json.dumps(plan.describe()))
        if {k: v for k, v in old.items() if k not in ADDITIVE_PLAN_KEYS} != {
                k: v for k, v in new.items() if k not in ADDITIVE_PLAN_KEYS}:
            raise DtgError(f"{stored}: the study there used another plan (sizes, seeds, grid or overrides); "
                           f"resume it with the same options or start a new one")
        if interim:  # the report covers what the study there plans
            plan = dataclasses.replace(plan, long_pretrain_epochs=old.get("long_pretrain_epochs", 0),
                                       entries=tuple(old["entries"]))
        elif old != new:  # entries added: trained from now on, and the report covers them
            write_json_atomic(stored, plan.describe())
            _note_growth(out / "records" / "command.json", command)
    else:
        out = fresh_out_dir(out, force)
        write_json_atomic(out / "records" / "plan.json", plan.describe())
        write_json_atomic(out / "records" / "command.json", {"command": command})
    first = out / "records" / "command.json"  # study.md names the command that started the study
    commands = json.loads(first.read_text()) if first.is_file() else {"command": command}
    t0 = time.time()
    study = Study(out, plan, progress)
    if interim and not study.finished("teacher_cache"):
        raise DtgError(f"{out}: the study has not finished its set-up; nothing to report yet")
    study.setup()
    seeds = list(plan.seeds)
    if interim:
        seeds = seeds[:next((k for k, seed in enumerate(seeds) if not study.seed_finished(seed)), len(seeds))]
        if not seeds:
            raise DtgError(f"{out}: no seed has finished every entry yet (the first is {plan.seeds[0]}); "
                           f"nothing to report yet")
    names = entry_names(plan)
    per_seed: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        for name, rec in study.run_seed(seed).items():
            per_seed.setdefault(name, {})[str(seed)] = rec
    for t in TEACHERS:
        if f"teacher_knn_{t}" in names:
            rec = study.record(f"teacher_knn_{t}", lambda t=t: study.teacher_entry(t))
            per_seed[f"teacher_knn_{t}"] = {"0": rec}
    for full, pretrained in FULL_FINETUNES.items():
        if full in names:
            per_seed[full] = {seed: {**r, "top1": r["full_top1"], "val_top1": r["full_val_top1"]}
                              for seed, r in per_seed[pretrained].items()}

    def best(candidates: list[str]) -> tuple[str | None, dict]:
        present = [n for n in candidates if n in per_seed]
        return best_on_val(per_seed, present) if present else (None, {})

    grid = [grid_name(w) for w in plan.grid]
    best_fixed, grid_val = best(grid)
    if best_fixed:
        per_seed["dtg_best_fixed"] = per_seed[best_fixed]
    best_token, token_val = best([token_name(r) for r in plan.token_ratios])
    if best_token:
        per_seed["vit_token"] = per_seed[best_token]
    dtg, dtg_val = best(grid + ["dtg_learned", "dtg_adaptive", *plan.long_names()[1:]])
    ssl, _ = best(["ssl", *plan.long_names()[:1]])
    # joint training is held against supervised training with the same labels at its best: the fine-tune
    # recipe (scratch) or the joint recipe without L_DTG, whichever is better on val
    supervised, _ = best(["scratch", "supervised"])
    results = {name: entry_stats(per_seed[name]) for name in names}
    meta = {
        "command": commands["command"], "grown_by": commands.get("grown_by", []),
        "side_entries": [n for n in names if n in side_entries(plan) | {"vit_token", "dtg_best_fixed"}],
        "seconds": round(sum(study.timings.values()), 1),
        "seconds_this_invocation": round(time.time() - t0, 1), "resumed": resume,
        "interim_seeds": seeds if interim and seeds != list(plan.seeds) else None,
        "stage_seconds": study.timings,
        "machine": {"device": str(study.device), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "plan": plan.describe(),
        "data": {"design": plan.design, **{k: study.synth[k] for k in ("preset", "classes", "videos", "stills")}},
        "action_teacher": {k: study.action[k] for k in ("train_acc", "val_acc")},
        "best_fixed": best_fixed, "grid_val_top1": grid_val, "dtg": dtg, "dtg_val_top1": dtg_val,
        "best_token": best_token, "token_val_top1": token_val,
        "supervised_baseline": supervised, "ssl_baseline": ssl, "targets": check_targets(results, dtg, supervised, ssl),
        "appearance_ratio": appearance_ratio(results),
        "per_seed": per_seed,
    }
    write_json_atomic(out / "study.json", results)
    write_json_atomic(out / "runs.json", meta)
    write_study_report(out, results, meta)
    return {"results": results, "meta": meta}
