"""`dtgnet study`: does differentiated teacher guidance help, by how much, and which weighting wins.

The data, the action teacher, a prepared memory map and both teachers' feature caches are made once; then
every entry is trained with each seed (the seed sets initialisation, sampling, augmentation and which 10 %
of the training videos carry labels) and scored on the test split:

* ``top1``: video-level top-1 after training on 10 % of the labels. Pre-training entries (``ssl``,
  ``dtg_*``) are fine-tuned with the same recipe as ``scratch``; ``single_frame`` is ``scratch`` given one
  frame; ``supervised`` and ``joint_dtg`` share the joint recipe (mode ii, end to end on the labelled
  videos), the first with cross-entropy only, the second with ``CE + L_DTG``.
* ``knn`` / ``r1``: weighted kNN top-1 and retrieval R@1 (test queries, training videos as the gallery) of
  the entry's representation before any label is used where it has one (the pre-trained student), else of
  the trained student. ``teacher_knn_<name>`` entries are the teachers' own pooled frame features; their
  ``top1`` is that kNN top-1.

Every choice is made on the val split: ``dtg_best_fixed`` is the weight-grid point with the best mean val
top-1, and the DTG variant the targets are checked against is the best DTG entry on val.

The study resumes: each stage and each (entry, seed) writes its record once, and ``--resume`` skips what
has a record.
"""
from __future__ import annotations

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

from .config import Config, load_config, validate
from .data.dataset import VideoDataset
from .data.lists import load_split
from .data.prepare import prepare
from .data.synth import generate
from .data.video import get_reader
from .errors import DtgError
from .evaluation import eval_dataset, evaluate_model, extract, extract_teacher, frozen_feature_scores
from .recipes import Sizes, base_config, finetune_config, fresh_out_dir, pretrain_config, synth_teachers
from .students import load_student
from .teacher_cache import write_caches
from .teachers import build_teacher, train_action_teacher
from .training import pick_device, train

TEACHERS = ("imagenet", "action")
VIT_STUDENT = ("student.arch=vit_t", "student.patch_size=8", "student.tubelet=2")
"""The ViT pair's student: ViT-Ti, 2x8x8 tubelets (2 x 4 x 4 tokens at the study's 4 frames of 32x32)."""


@dataclass(frozen=True)
class StudyPlan:
    sizes: Sizes
    seeds: tuple[int, ...] = (0, 1, 2)
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
    overrides: tuple[str, ...] = ()
    """Dotted ``key=value`` config overrides applied to every run: a study of a method change."""

    def describe(self) -> dict:
        return {"sizes": self.sizes.__dict__, "seeds": list(self.seeds), "grid": [list(w) for w in self.grid],
                "finetune_lr": self.finetune_lr, "finetune_head_lr_scale": self.finetune_head_lr_scale,
                "joint_unlabelled": self.joint_unlabelled, "joint_epochs": self.joint_epochs,
                "overrides": list(self.overrides)}


PLANS = {
    # smoke size: every entry runs with two seeds (the fewest an interval needs), two steps each (CI checks
    # the outputs, not the numbers)
    "quick": StudyPlan(Sizes("smoke", frames=4, size=32, batch_size=16, pretrain_epochs=1, finetune_epochs=2,
                             single_frame_epochs=2, teacher_input=64, label_fraction=0.5, max_steps=2),
                       seeds=(0, 1)),
    "full": StudyPlan(Sizes("default", frames=4, size=32, batch_size=24, pretrain_epochs=8, finetune_epochs=30,
                            single_frame_epochs=30, teacher_input=96)),
}


def grid_name(weights: tuple[float, float]) -> str:
    named = {(1.0, 0.0): "dtg_imagenet", (0.0, 1.0): "dtg_action", (1.0, 1.0): "dtg_equal"}
    return named.get(tuple(weights), "dtg_w{:g}_{:g}".format(*weights))


def entry_names(plan: StudyPlan) -> list[str]:
    """Every name study.json holds, in table order."""
    fixed = [grid_name(w) for w in plan.grid]
    return (["scratch", "ssl", *fixed[:3], "dtg_best_fixed", *fixed[3:], "dtg_learned", "dtg_adaptive",
             "supervised", "joint_dtg", "single_frame", "vit_ssl", "vit_dtg"] + [f"teacher_knn_{t}" for t in TEACHERS])


# ------------------------------------------------------------------------------------------ statistics

def summarise(values: list[float]) -> tuple[float, list[float]]:
    """Mean and two-sided 95 % Student-t confidence interval of the mean (a single value: a zero-width one)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, [m, m]
    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, [m - half, m + half]


def entry_stats(seeds: dict[str, dict]) -> dict:
    """``{seed: {"top1", "knn", "r1"}}`` (fractions) -> study.json's shape, in percent."""
    out = {}
    for metric in ("top1", "knn", "r1"):
        values = [100 * seeds[s][metric] for s in sorted(seeds, key=int)]
        m, ci = summarise(values)
        out.update({f"{metric}_mean": round(m, 2), f"{metric}_ci95": [round(ci[0], 2), round(ci[1], 2)],
                    f"{metric}_seeds": [round(v, 2) for v in values]})
    return out


# ------------------------------------------------------------------------------------------ the runs

class Study:
    def __init__(self, out: Path, plan: StudyPlan, progress: bool, knn_queries: str = "test"):
        self.out, self.plan, self.sizes, self.progress = out, plan, plan.sizes, progress
        self.knn_queries = knn_queries  # the split whose videos query the training gallery (val in probes)
        self.data_dir, self.runs = out / "data", out / "runs"
        self.device = pick_device("auto")
        self.timings: dict[str, float] = {}

    def record(self, name: str, fn):
        """``fn()``'s JSON result, computed once: stored under ``records/`` with its time, reused on resume."""
        path = self.out / "records" / f"{name}.json"
        if not path.is_file():
            t0 = time.time()
            result = fn()
            _write_json(path, {"seconds": round(time.time() - t0, 1), "result": result})
            if self.progress:
                print(f"study: {name} done in {time.time() - t0:.0f} s", flush=True)
        stored = json.loads(path.read_text())
        self.timings[name] = stored["seconds"]
        return stored["result"]

    # ---------------------------------------------------------------- shared set-up
    def setup(self) -> None:
        s = self.sizes
        self.synth = self.record("synth", lambda: generate(self.data_dir, s.preset, 0, self.progress))
        self.action = self.record("action_teacher", lambda: train_action_teacher(
            self.data_dir / "stills", self.out / "teachers" / "action.safetensors", input_size=s.teacher_input,
            seed=0, progress=self.progress))
        probe = base_config(self.data_dir, s, 0)
        lists = [load_split(probe.data, subset) for subset in ("train", "val", "test")]
        size = (s.size * 8 // 7 + 1) // 2 * 2  # room for the random crop
        self.record("prepare", lambda: {k: v for k, v in prepare(lists, get_reader("pyav"), self.out / "prepared",
                                                                   size, self.progress).items() if k != "bad"})

        def caches():  # teachers embed the original frames, not the student's downsized copy
            train_set = VideoDataset(lists[0], "single", s.frames, s.size, reader=get_reader("pyav"))
            tcs = synth_teachers(s, self.action["path"])
            write_caches([build_teacher(tc).to(self.device) for tc in tcs], tcs, train_set,
                         self.out / "teacher_cache", self.device, progress=self.progress)
            return {"teachers": list(TEACHERS), "videos": len(train_set)}

        self.record("teacher_cache", caches)

    def base(self, seed: int, student: tuple[str, ...] = ()) -> Config:
        cfg = base_config(self.data_dir, self.sizes, seed)
        cfg.data.prepared = str(self.out / "prepared")
        cfg.run.teacher_cache, cfg.run.teacher_cache_dir = False, str(self.out / "teacher_cache")
        overrides = [*student, *self.plan.overrides]
        return load_config(None, overrides, base=cfg) if overrides else cfg

    def _labelled_config(self, base: Config, name: str, frames: int | None = None) -> Config:
        """The fine-tune recipe with the plan's learning rates (fine-tune, scratch and joint entries)."""
        cfg = finetune_config(base, self.runs, name, self.sizes, frames=frames)
        cfg.optim.lr, cfg.optim.head_lr_scale = self.plan.finetune_lr, self.plan.finetune_head_lr_scale
        return cfg

    def _finetune(self, base: Config, name: str, init: str | None, frames: int | None = None) -> Config:
        cfg = self._labelled_config(base, name, frames)
        validate(cfg)
        train(cfg, "finetune", init, force=True, progress=self.progress)
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

    def _tidy(self, cfg: Config) -> None:
        """Keep a run's logs and config; its checkpoints and weights are not needed once it is scored."""
        run = Path(cfg.run.out)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        (run / "student.safetensors").unlink(missing_ok=True)

    def pretrain_entry(self, name: str, seed: int, teachers, weighting: str = "fixed",
                       student: tuple[str, ...] = ()) -> dict:
        base = self.base(seed, student)
        pre = pretrain_config(base, self.runs, f"{name}_s{seed}_pretrain", teachers, self.sizes)
        pre.loss.weighting = weighting
        validate(pre)
        metrics = train(pre, "pretrain", force=True, progress=self.progress)
        rep = self._representation(self._trained(pre), pre)  # label-free, before fine-tuning
        ft = self._finetune(base, f"{name}_s{seed}_finetune", str(Path(pre.run.out) / "student.safetensors"))
        self._tidy(pre)
        return {**self._scored(ft), **rep,
                "teacher_weights": metrics.get("teacher_weights"), "pretrain_loss": metrics.get("final_loss")}

    def scratch_entry(self, name: str, seed: int, frames: int | None = None) -> dict:
        return self._scored(self._finetune(self.base(seed), f"{name}_s{seed}", None, frames=frames))

    def joint_entry(self, name: str, seed: int, dtg: bool) -> dict:
        cfg = self._labelled_config(self.base(seed), f"{name}_s{seed}")
        cfg.teachers = synth_teachers(self.sizes, self.action["path"])
        cfg.loss.joint_lambda = 1.0 if dtg else 0.0  # the same runs, views and steps; only L_DTG differs
        if self.plan.joint_unlabelled:
            cfg.data.joint_unlabelled = True
            cfg.optim.batch_size, cfg.optim.epochs = self.sizes.batch_size, self.plan.joint_epochs
        validate(cfg)
        train(cfg, "joint", force=True, progress=self.progress)
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
        """Every entry's record for ``seed`` (``only``: just those entries)."""
        s, action = self.sizes, self.action["path"]
        jobs = {
            "scratch": lambda: self.scratch_entry("scratch", seed),
            "ssl": lambda: self.pretrain_entry("ssl", seed, []),
            **{grid_name(w): (lambda w=w: self.pretrain_entry(grid_name(w), seed, synth_teachers(s, action, w)))
               for w in self.plan.grid},
            "dtg_learned": lambda: self.pretrain_entry("dtg_learned", seed, synth_teachers(s, action), "learned"),
            "dtg_adaptive": lambda: self.pretrain_entry("dtg_adaptive", seed, synth_teachers(s, action), "adaptive"),
            "supervised": lambda: self.joint_entry("supervised", seed, dtg=False),
            "joint_dtg": lambda: self.joint_entry("joint_dtg", seed, dtg=True),
            "single_frame": lambda: self.scratch_entry("single_frame", seed, frames=1),
            "vit_ssl": lambda: self.pretrain_entry("vit_ssl", seed, [], student=VIT_STUDENT),
            "vit_dtg": lambda: self.pretrain_entry("vit_dtg", seed, synth_teachers(s, action), "adaptive",
                                                   student=VIT_STUDENT),
        }
        unknown = set(only or []) - set(jobs)
        if unknown:
            raise DtgError(f"unknown study entries: {', '.join(sorted(unknown))} (known: {', '.join(jobs)})")
        return {name: self.record(f"{name}_s{seed}", job) for name, job in jobs.items() if not only or name in only}


# ------------------------------------------------------------------------------------------ the study

def best_on_val(per_seed: dict[str, dict[str, dict]], names: list[str]) -> tuple[str, dict[str, float]]:
    """The name with the highest mean val top-1, and every name's mean val top-1."""
    val = {n: float(np.mean([r["val_top1"] for r in per_seed[n].values()])) for n in names}
    return max(names, key=lambda n: val[n]), val


def check_targets(study: dict, dtg: str) -> list[dict]:
    """The issue's four targets on mean fine-tune top-1 (points). Each also carries the paired comparison:
    the 95 % interval of the per-seed differences (both entries of a seed share its labelled videos)."""
    m = {k: v["top1_mean"] for k, v in study.items()}
    ci = {k: v["top1_ci95"] for k, v in study.items()}

    def target(text: str, a: str, b: str, margin: float, met: bool) -> dict:
        diffs = [x - y for x, y in zip(study[a]["top1_seeds"], study[b]["top1_seeds"])]
        _, paired = summarise(diffs)
        return {"target": text, "gap": round(m[a] - m[b], 2), "margin": margin, "met": met,
                "paired_ci95": [round(paired[0], 2), round(paired[1], 2)]}

    return [
        target(f"{dtg} >= scratch + 15", dtg, "scratch", 15, m[dtg] >= m["scratch"] + 15),
        target(f"{dtg} >= ssl + 5, 95 % intervals apart", dtg, "ssl", 5,
               m[dtg] >= m["ssl"] + 5 and ci[dtg][0] > ci["ssl"][1]),
        target("dtg_adaptive >= dtg_best_fixed - 1", "dtg_adaptive", "dtg_best_fixed", -1,
               m["dtg_adaptive"] >= m["dtg_best_fixed"] - 1),
        target("joint_dtg >= supervised + 3", "joint_dtg", "supervised", 3, m["joint_dtg"] >= m["supervised"] + 3),
        target("vit_dtg > vit_ssl (the method carries over to a ViT student)", "vit_dtg", "vit_ssl", 0,
               m["vit_dtg"] > m["vit_ssl"]),
    ]


def run_study(out, quick: bool = False, force: bool = False, resume: bool = False, progress: bool = True,
              plan: StudyPlan | None = None, command: str = "") -> dict:
    from .reports import write_study_report

    plan = plan or PLANS["quick" if quick else "full"]
    load_config(None, plan.overrides, check_paths=False)  # a bad override fails before any work
    out = Path(out)
    if resume:
        stored = out / "records" / "plan.json"
        if not stored.is_file():
            raise DtgError(f"{out}: no study to resume (no records/plan.json)")
        if json.loads(stored.read_text()) != json.loads(json.dumps(plan.describe())):
            raise DtgError(f"{stored}: the study there used another plan (sizes, seeds, grid or overrides); "
                           f"resume it with the same options or start a new one")
    else:
        out = fresh_out_dir(out, force)
        _write_json(out / "records" / "plan.json", plan.describe())
        _write_json(out / "records" / "command.json", {"command": command})
    first = out / "records" / "command.json"  # study.md names the command that started the study
    command = json.loads(first.read_text())["command"] if first.is_file() else command
    t0 = time.time()
    study = Study(out, plan, progress)
    study.setup()
    per_seed: dict[str, dict[str, dict]] = {}
    for seed in plan.seeds:
        for name, rec in study.run_seed(seed).items():
            per_seed.setdefault(name, {})[str(seed)] = rec
    for t in TEACHERS:
        rec = study.record(f"teacher_knn_{t}", lambda t=t: study.teacher_entry(t))
        per_seed[f"teacher_knn_{t}"] = {"0": rec}

    grid = [grid_name(w) for w in plan.grid]
    best_fixed, grid_val = best_on_val(per_seed, grid)
    per_seed["dtg_best_fixed"] = per_seed[best_fixed]
    dtg, dtg_val = best_on_val(per_seed, grid + ["dtg_learned", "dtg_adaptive"])
    results = {name: entry_stats(per_seed[name]) for name in entry_names(plan)}
    meta = {
        "command": command, "seconds": round(sum(study.timings.values()), 1),
        "seconds_this_invocation": round(time.time() - t0, 1), "resumed": resume,
        "stage_seconds": study.timings,
        "machine": {"device": str(study.device), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "plan": plan.describe(),
        "data": {k: study.synth[k] for k in ("preset", "classes", "videos", "stills")},
        "action_teacher": {k: study.action[k] for k in ("train_acc", "val_acc")},
        "best_fixed": best_fixed, "grid_val_top1": grid_val, "dtg": dtg, "dtg_val_top1": dtg_val,
        "targets": check_targets(results, dtg),
        "per_seed": per_seed,
    }
    _write_json(out / "study.json", results)
    _write_json(out / "runs.json", meta)
    write_study_report(out, results, meta)
    return {"results": results, "meta": meta}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
