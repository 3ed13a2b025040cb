"""One training loop for the three modes.

* ``pretrain`` (mode i): DTG loss on two views per video; labels are never read.
* ``finetune``: cross-entropy on a fraction of the labels, from a pre-trained checkpoint or from scratch.
* ``joint`` (mode ii): ``CE(classifier(f(x^a)), y) + lambda * L_DTG``, end to end.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .checkpoint import config_hash, load_checkpoint, rng_state, save_rotating, set_rng_state
from .config import Config, save_config, to_dict
from .data.dataset import VideoDataset, stratified_subset
from .data.lists import VideoList, load_split
from .errors import CheckpointError, DataError, DtgError, TooManyBadItems
from .losses import dtg_loss
from .runlog import Logger, RunDir
from .students import DTGStudent, build_student, save_student_safetensors
from .teacher_cache import build_cache
from .teachers import Teacher, build_teacher
from .weighting import build_weighting

MODES = ("pretrain", "finetune", "joint")


class NonFiniteLoss(DtgError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("run.device", "cuda requested but no GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumableSampler(Sampler):
    """A seeded permutation per epoch, sharded over ranks, that can start part-way through an epoch."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world
        return perm[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return self.n // self.world - self.start


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak LR: linear warm-up, then cosine decay to 1 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Batch:
    a: torch.Tensor
    b: torch.Tensor | None
    label: torch.Tensor
    index: torch.Tensor
    frames_a: torch.Tensor
    frames_b: torch.Tensor | None


class Trainer:
    def __init__(self, cfg: Config, mode: str, init: str | None = None, resume: bool = False,
                 force: bool = False, progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.cfg, self.mode, self.progress = cfg, mode, progress
        self.device = pick_device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.run_dir = RunDir(cfg.run.out, resume=resume, force=force)
        self.out = self.run_dir.path
        try:
            self._setup(init, resume)
        except BaseException:
            self.run_dir.close()
            raise

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self, init, resume):
        cfg = self.cfg
        seed_everything(cfg.run.seed)
        if not resume:
            save_config(cfg, self.out / "config.yaml")
        self.videos: VideoList = load_split(cfg.data, "train")
        self.uses_labels = self.mode in ("finetune", "joint")
        self.uses_teachers = self.mode in ("pretrain", "joint")
        entries = self.videos.good
        self.list_bad = [(str(self.videos.full_path(e)), e.problem) for e in self.videos.entries if e.problem]
        if self.uses_labels:
            entries = [e for e in entries if e.label >= 0]
            if not entries:
                raise DataError(f"{self.videos.source}: no labelled entries for {self.mode}")
            keep = stratified_subset(np.array([e.label for e in entries]), cfg.data.label_fraction, cfg.run.seed)
            entries = [entries[i] for i in keep]
        self.num_classes = len(self.videos.classes)
        self.teachers: list[Teacher] = [build_teacher(t).to(self.device) for t in cfg.teachers] \
            if self.uses_teachers else []
        pair = self.mode in ("pretrain", "joint")
        self.model: DTGStudent = build_student(
            cfg, {t.name: t.embed_dim for t in self.teachers}, self.num_classes if self.uses_labels else 0,
            self_head=pair and cfg.loss.self_weight > 0).to(self.device)
        self.dataset = VideoDataset(self.videos, "pair" if pair else "single", cfg.data.frames, cfg.data.size,
                                    self.model.temporal, cfg.data.stride, backend=cfg.data.reader,
                                    seed=cfg.run.seed, flip=cfg.data.flip, strong_aug=cfg.data.strong_aug,
                                    entries=entries)
        if len(self.dataset) < cfg.optim.batch_size:
            raise DataError(f"{self.videos.source}: {len(self.dataset)} usable videos, fewer than "
                            f"optim.batch_size={cfg.optim.batch_size}")
        self.caches = None
        if cfg.run.teacher_cache and self.teachers:
            self.caches = [build_cache(t, self.dataset, self.device, progress=self.progress) for t in self.teachers]
        self.weighting = build_weighting(cfg.loss, [t.weight for t in cfg.teachers] if self.teachers else []
                                         ).to(self.device)
        self.queues = [torch.zeros(0, t.embed_dim, device=self.device) for t in self.teachers]
        if self.device.type == "cuda" and self.model.temporal == "clip":
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if init:
            self._load_init(init)
        self.sampler = ResumableSampler(len(self.dataset), cfg.run.seed)
        self.steps_per_epoch = len(self.dataset) // cfg.optim.batch_size
        total = cfg.optim.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total
        backbone = list(self.model.backbone.parameters())
        ids = {id(p) for p in backbone}
        heads = [p for p in self.model.parameters() if id(p) not in ids] + list(self.weighting.parameters())
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            [{"params": backbone, "lr": cfg.optim.lr},
             {"params": heads, "lr": cfg.optim.lr * cfg.optim.head_lr_scale}],
            lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr(s, self.total_steps, cfg.optim.warmup_steps))
        self.forward_model = torch.compile(self.model) if cfg.run.compile else self.model
        self.step, self.epoch, self.bad_items, self.items_seen = 0, 0, list(self.list_bad), 0
        self.weight_history: list[list[float]] = []
        if resume:
            self._resume()
        self.logger = Logger(self.out)

    def _load_init(self, path):
        ckpt = load_checkpoint(path)
        state = ckpt.get("model", ckpt)
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise CheckpointError(f"{path}: holds no student backbone weights")
        try:
            self.model.backbone.load_state_dict(backbone)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: backbone does not match student.arch={self.cfg.student.arch} "
                                  f"({str(e).splitlines()[0]})") from None

    def _meta(self) -> dict:
        return {"config": to_dict(self.cfg), "mode": self.mode, "teacher_heads": {t.name: t.embed_dim for t in self.teachers},
                "num_classes": self.num_classes if self.uses_labels else 0,
                "self_head": self.model.self_head is not None, "classes": self.videos.classes}

    def _checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "weighting": self.weighting.state_dict(),
                 "queues": self.queues, "step": self.step, "epoch": self.epoch, "rng": rng_state(),
                 "config_hash": config_hash(to_dict(self.cfg)), "meta": self._meta(),
                 "bad_items": self.bad_items, "items_seen": self.items_seen,
                 "weight_history": self.weight_history}
        save_rotating(state, self.run_dir.ckpt_dir, self.step, self.cfg.run.keep_checkpoints)

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir.ckpt_dir / "last.pt")
        if ckpt.get("config_hash") != config_hash(to_dict(self.cfg)):
            raise CheckpointError(f"{self.out}: the config differs from the one the run started with; "
                                  f"resume with the run's own config.yaml")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.weighting.load_state_dict(ckpt["weighting"])
        self.queues = [q.to(self.device) for q in ckpt["queues"]]
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.bad_items, self.items_seen = ckpt["bad_items"], ckpt["items_seen"]
        self.weight_history = ckpt["weight_history"]
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------------------------------ the step
    def _autocast(self):
        enabled = self.cfg.run.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.forward_model
        out: dict[str, torch.Tensor] = {}
        with self._autocast():
            if batch.b is not None:
                feats = model(torch.cat([batch.a, batch.b]))  # (2B, D): both views in one pass
                f_a, f_b = feats.chunk(2)
            else:
                f_a, f_b = model(batch.a), None
            loss = f_a.new_zeros((), dtype=torch.float32)
            if self.uses_labels:
                out["ce"] = F.cross_entropy(self.model.classifier(f_a).float(), batch.label)
                loss = loss + out["ce"]
            if f_b is not None:
                if self.caches:
                    t_a = [c.lookup(batch.index, batch.frames_a).to(self.device) for c in self.caches]
                    t_b = [c.lookup(batch.index, batch.frames_b).to(self.device) for c in self.caches]
                else:
                    t_a = [t(batch.a) for t in self.teachers]  # K x (B, D_k), no grad
                    t_b = [t(batch.b) for t in self.teachers]
                self.weighting.update(t_a, t_b)
                heads = [self.model.teacher_heads[t.name] for t in self.teachers]
                sh = self.model.self_head
                res = dtg_loss(sh(f_a).float() if sh else None, sh(f_b).float() if sh else None,
                               [h(f_a).float() for h in heads], [h(f_b).float() for h in heads], t_a, t_b,
                               self.weighting.weights(), cfg.loss.self_weight, cfg.loss.form, cfg.loss.tau,
                               cfg.loss.margin, self.queues if cfg.loss.queue_size else None)
                dtg = res.total + self.weighting.regulariser()
                out["dtg"], out["self"] = res.total, res.self_term
                for t, term in zip(self.teachers, res.teacher_terms):
                    out[f"teacher/{t.name}"] = term
                loss = loss + (cfg.loss.joint_lambda * dtg if self.uses_labels else dtg)
                if cfg.loss.queue_size:
                    self.queues = [torch.cat([a.detach(), b.detach(), q])[:cfg.loss.queue_size]
                                   for a, b, q in zip(t_a, t_b, self.queues)]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        out["loss"] = loss.detach()
        return out

    # ------------------------------------------------------------------------------------------ the loop
    def _loader(self, start: int) -> DataLoader:
        self.sampler.set_position(self.epoch, start * self.cfg.optim.batch_size)
        self.dataset.set_epoch(self.epoch)
        nw = self.cfg.data.num_workers
        return DataLoader(self.dataset, batch_size=self.cfg.optim.batch_size, sampler=self.sampler,
                          num_workers=nw, drop_last=True, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if nw else None)

    def _to_batch(self, raw: dict) -> Batch:
        nb = self.device.type == "cuda"
        a = raw["a"].to(self.device, non_blocking=nb)
        b = raw["b"].to(self.device, non_blocking=nb) if "b" in raw else None
        return Batch(a, b, raw["label"].to(self.device, non_blocking=nb), raw["index"], raw["frames_a"],
                     raw.get("frames_b"))

    def _count_bad(self, raw: dict) -> None:
        self.items_seen += len(raw["index"])
        for text in raw["bad"]:
            for line in filter(None, text.split("\n")):
                path, reason = line.split("\t", 1)
                self.bad_items.append((path, reason))
                self.logger.log({"event": "bad_item", "step": self.step, "path": path, "reason": reason})
        attempted = self.items_seen + len(self.bad_items)
        frac = len(self.bad_items) / max(attempted, 1)
        if len(self.bad_items) and attempted >= 20 and frac > self.cfg.data.max_bad_fraction:
            self._checkpoint()
            raise TooManyBadItems(
                f"{len(self.bad_items)} of {attempted} items were unreadable ({frac:.1%} > "
                f"data.max_bad_fraction={self.cfg.data.max_bad_fraction}); first: {self.bad_items[0][0]}: "
                f"{self.bad_items[0][1]}. Progress saved in {self.run_dir.ckpt_dir / 'last.pt'}")

    def fit(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        try:
            self.model.train()
            self.logger.log({"event": "start", "mode": self.mode, "device": str(self.device),
                             "videos": len(self.dataset), "steps": self.total_steps,
                             "list_bad": len(self.list_bad)})
            for path, reason in self.list_bad:
                self.logger.log({"event": "bad_item", "step": 0, "path": path, "reason": reason})
            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.mode} {self.out.name}",
                       disable=not self.progress, unit="step", dynamic_ncols=True)
            window = {"t0": time.perf_counter(), "wait": 0.0, "clips": 0, "loss": []}
            while self.step < self.total_steps:
                start = self.step - self.epoch * self.steps_per_epoch
                t_wait = time.perf_counter()
                for raw in self._loader(start):
                    window["wait"] += time.perf_counter() - t_wait
                    self._count_bad(raw)
                    out = self.train_step(self._to_batch(raw))
                    self.step += 1
                    window["clips"] += len(raw["index"]) * (2 if "b" in raw else 1)
                    window["loss"].append(out["loss"])
                    bar.update(1)
                    if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                        self._log_window(out, window, bar)
                    if self.step % cfg.run.checkpoint_every == 0 and self.step < self.total_steps:
                        self._checkpoint()
                    if self.step >= self.total_steps:
                        break
                    t_wait = time.perf_counter()
                self.epoch = self.step // self.steps_per_epoch
            self._checkpoint()
            bar.close()
            return self._finish()
        finally:
            self.logger.close()
            self.run_dir.close()

    def _log_window(self, out, window, bar) -> None:
        losses = torch.stack(window["loss"]).float()
        if not torch.isfinite(losses).all():
            bad_step = self.step - len(losses) + int((~torch.isfinite(losses)).nonzero()[0])
            raise NonFiniteLoss(f"non-finite loss at step {bad_step + 1}; the last good checkpoint is "
                                f"{self.run_dir.ckpt_dir / 'last.pt'}")
        elapsed = time.perf_counter() - window["t0"]
        weights = self.weighting.weights().detach().float().cpu().tolist()
        self.weight_history.append([self.step] + weights)
        record = {"step": self.step, "epoch": self.epoch, "loss": losses.mean().item(),
                  "lr": self.scheduler.get_last_lr()[0], "clips_per_s": window["clips"] / max(elapsed, 1e-9),
                  "data_wait_frac": window["wait"] / max(elapsed, 1e-9), "bad_items": len(self.bad_items)}
        record.update({k: v.item() for k, v in out.items() if k != "loss"})
        if self.teachers:
            record["weights"] = {t.name: w for t, w in zip(self.teachers, weights)}
        self.logger.log(record, step=self.step)
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
        window.update(t0=time.perf_counter(), wait=0.0, clips=0, loss=[])

    def _finish(self) -> dict:
        weights = self.weighting.weights().detach().float().cpu().tolist()
        metrics = {"mode": self.mode, "steps": self.step, "videos": len(self.dataset),
                   "bad_items": [{"path": p, "reason": r} for p, r in self.bad_items],
                   "teacher_weights": {t.name: w for t, w in zip(self.teachers, weights)},
                   "teacher_weight_history": self.weight_history,
                   "final_loss": self._last_loss()}
        save_student_safetensors(self.model, self.out / "student.safetensors", self._meta())
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def _last_loss(self):
        from .runlog import read_log

        losses = [r["loss"] for r in read_log(self.out / "log.jsonl") if "loss" in r]
        return losses[-1] if losses else None


def train(cfg: Config, mode: str, init: str | None = None, resume: bool = False, force: bool = False,
          progress: bool = True) -> dict:
    """Run one training job; returns its metrics (also written to ``run.out/metrics.json``)."""
    return Trainer(cfg, mode, init, resume, force, progress).fit()


def load_run_config(run_dir) -> Config:
    from .config import load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir}: no config.yaml (not a dtgnet run directory)")
    return load_config(path)
