"""One training loop for the three modes.

* ``pretrain`` (mode i): DTG loss on two views per video; labels are never read.
* ``finetune``: cross-entropy on a fraction of the labels, from a pre-trained checkpoint or from scratch.
* ``joint`` (mode ii): ``CE(classifier(f(x^a)), y) + lambda * L_DTG``, end to end.

SIGTERM or SIGUSR1 (a cluster's preemption notice) lets the step in progress finish, writes a checkpoint on
every rank's behalf and stops with :class:`~dtgnet.errors.Preempted` (exit status 75 from the CLI).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .checkpoint import (config_hash, load_checkpoint, load_newest_readable, rng_state, save_rotating,
                         set_rng_state)
from .config import Config, labelled_per_batch, save_config, to_dict
from .data.dataset import VideoDataset, collate_views, finish_views, stratified_subset
from .data.prepare import reader_for
from .data.video import get_reader
from .data.lists import VideoList, load_split
from .errors import CheckpointError, DataError, DtgError, Preempted, TooManyBadItems, first_line
from .losses import dtg_loss
from .runlog import Logger, RunDir
from .storage import DiskFullError
from .students import DTGStudent, build_student, initialise_backbone, save_student_safetensors
from .teacher_cache import build_caches, load_cache
from .teachers import Teacher, build_teacher
from .weighting import build_weighting

MODES = ("pretrain", "finetune", "joint")
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteLoss(DtgError):
    pass


def _worker_exits_quietly(_worker_id: int) -> None:
    """A scheduler signals every process of a job. A DataLoader worker then exits with status 0: killed by
    the signal, it would make the loader raise at an arbitrary point of the main process's step; exiting
    cleanly, the loader only fails at the next fetch, where the main process, signalled too, stops.
    A worker also dies with its parent (Linux): an orphan would hold the parent's inherited sockets, such as
    a dead rank's gloo connections, open while torchrun restarts the job."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, lambda *_: os._exit(0))
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 1800.0) -> Dist:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...);
    a plain single-process run has no such variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather(x: torch.Tensor, dist_info: Dist, with_grad: bool) -> torch.Tensor:
    """Concatenate every rank's ``(B, D)`` into the global ``(world * B, D)``; with ``with_grad`` the gradient
    flows back to each rank's own rows."""
    if dist_info.world == 1:
        return x
    import torch.distributed as dist

    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(x))
    parts = [torch.empty_like(x) for _ in range(dist_info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("run.device", "cuda requested but no GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumableSampler(Sampler):
    """A seeded permutation per epoch, cut into global batches; rank r takes the r-th slice of every global
    batch, so the ranks' local batches concatenated in rank order are exactly the single-process batch. It
    can start part-way through an epoch (``start`` local items in)."""

    def __init__(self, n: int, seed: int, global_batch: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.global_batch, self.local_batch = global_batch, global_batch // world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        batches = perm[: self.n // self.global_batch * self.global_batch].view(-1, self.world, self.local_batch)
        return batches[:, self.rank].flatten().tolist()  # (steps * local_batch,)

    def __iter__(self):
        return iter([(self.epoch, i) for i in self._order()[self.start:]])

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch * self.local_batch - self.start


class LabelledShareSampler(ResumableSampler):
    """Semi-supervised batches: each global batch holds ``labelled`` items drawn from ``labelled_idx`` (cycled
    in fresh permutations, as there are few) and the rest from ``unlabelled_idx``; an epoch is one pass over
    the unlabelled items. Each global batch is shuffled before the ranks take their slices, so every rank
    sees both kinds."""

    def __init__(self, labelled_idx: list[int], unlabelled_idx: list[int], labelled: int, seed: int,
                 global_batch: int, rank: int = 0, world: int = 1):
        super().__init__(len(labelled_idx) + len(unlabelled_idx), seed, global_batch, rank, world)
        self.labelled_idx, self.unlabelled_idx = torch.tensor(labelled_idx), torch.tensor(unlabelled_idx)
        self.labelled, self.unlabelled = labelled, global_batch - labelled

    @property
    def steps_per_epoch(self) -> int:
        return len(self.unlabelled_idx) // self.unlabelled

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        steps = self.steps_per_epoch
        u = self.unlabelled_idx[torch.randperm(len(self.unlabelled_idx), generator=g)][: steps * self.unlabelled]
        cycles = -(-steps * self.labelled // len(self.labelled_idx))
        lab = torch.cat([self.labelled_idx[torch.randperm(len(self.labelled_idx), generator=g)]
                         for _ in range(cycles)])[: steps * self.labelled]
        batches = torch.cat([lab.view(steps, self.labelled), u.view(steps, self.unlabelled)], 1)  # (steps, B)
        mix = torch.stack([torch.randperm(self.global_batch, generator=g) for _ in range(steps)])
        batches = batches.gather(1, mix).view(steps, self.world, self.local_batch)
        return batches[:, self.rank].flatten().tolist()  # (steps * local_batch,)


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


class StepModule(torch.nn.Module):
    """Everything trainable (student, heads, classifier, learned teacher weights) behind one forward, so a
    DistributedDataParallel wrapper synchronises all of it."""

    def __init__(self, student: DTGStudent, weighting: torch.nn.Module, teacher_names: list[str],
                 reverse: bool = False, segments: bool = False):
        super().__init__()
        self.student, self.weighting, self.teacher_names = student, weighting, teacher_names
        self.reverse = reverse  # also embed view a played backwards (loss.reverse_weight)
        self.segments = segments  # also the teacher heads of each segment (loss.segment_weight)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None) -> dict:
        s = self.student
        f_r = steps = None
        if b is None:
            f_a, f_b = s(a), None
        else:  # every view in one pass; (B, T, 3, H, W) views, so a backwards is a.flip(1)
            views = [a, b, a.flip(1)] if self.reverse else [a, b]
            if self.segments:
                steps = s.backbone.per_segment(torch.cat(views))  # (V*B, T, D)
                f = steps.mean(1)
            else:
                f = s(torch.cat(views))  # (V*B, D)
            f_a, f_b, *rest = f.chunk(len(views))
            f_r = rest[0] if rest else None
        out = {"weights": self.weighting.weights(), "reg": self.weighting.regulariser()}
        if s.classifier is not None:
            out["logits"] = s.classifier(f_a)
        if f_b is not None:
            if s.self_head is not None:
                out["self_a"], out["self_b"] = s.self_head(f_a), s.self_head(f_b)
                if f_r is not None:
                    out["self_reversed"] = s.self_head(f_r)
            out["heads_a"] = [s.teacher_heads[n](f_a) for n in self.teacher_names]
            out["heads_b"] = [s.teacher_heads[n](f_b) for n in self.teacher_names]
        if steps is not None:
            b_, t = f_a.shape[0], steps.shape[1]
            for view, x in zip("ab", steps[:2 * b_].chunk(2)):  # (B, T, D) per view
                out[f"segments_{view}"] = [s.teacher_heads[n](x.flatten(0, 1)).unflatten(0, (b_, t))
                                           for n in self.teacher_names]
        return out


def resume_mode(resume: bool | str) -> str:
    """``False``/``True`` (the CLI's bare ``--resume``) or a :data:`~dtgnet.runlog.RESUME_MODES` name."""
    return {False: "never", True: "always"}.get(resume, resume) if isinstance(resume, bool) else resume


class Trainer:
    def __init__(self, cfg: Config, mode: str, init: str | None = None, resume: bool | str = False,
                 force: bool = False, progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.cfg, self.mode = cfg, mode
        self.stop_signal: int | None = None
        self.dist = init_distributed(cfg.run.dist_timeout_s)
        self.progress = progress and self.dist.main
        if cfg.optim.batch_size % self.dist.world:
            from .errors import ConfigError

            raise ConfigError("optim.batch_size", f"{cfg.optim.batch_size} is not divisible by the "
                                                  f"{self.dist.world} processes")
        self.device = pick_device(cfg.run.device, self.dist.local_rank)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.out = Path(cfg.run.out)
        self.run_dir = None
        failure, resuming = None, False
        if self.dist.main:  # only rank 0 writes the run directory
            try:
                self.run_dir = RunDir(cfg.run.out, resume_mode(resume), force, config=to_dict(cfg))
                resuming = self.run_dir.resuming
            except DtgError as e:
                failure = e
        self.resuming = self._agree(failure, resuming)
        try:
            self._setup(init, self.resuming)
        except BaseException:
            self.close()
            if self.run_dir is not None:
                self.run_dir.discard()
            raise

    def _agree(self, failure: DtgError | None, resuming: bool) -> bool:
        """Every rank stops with rank 0's error instead of waiting for it forever, and resumes when rank 0
        found a checkpoint to resume."""
        message = str(failure) if failure else ""
        if self.dist.world > 1:
            import torch.distributed as dist

            box = [message, resuming]
            dist.broadcast_object_list(box, src=0)
            message, resuming = box
        if failure:
            raise failure
        if message:
            raise DtgError(message)
        return resuming

    def close(self) -> None:
        self._dataloader = None  # persistent workers shut down now, not at interpreter exit
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        if self.run_dir is not None:
            self.run_dir.close()

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self, init, resume):
        """The run's parts, built in a fixed order (the RNG draws of each part depend on it)."""
        cfg = self.cfg
        seed_everything(cfg.run.seed)
        if not resume and self.dist.main:
            save_config(cfg, self.out / "config.yaml")
        self.videos: VideoList = load_split(cfg.data, "train")
        self.uses_labels = self.mode in ("finetune", "joint")
        self.uses_teachers = self.mode in ("pretrain", "joint")
        self.list_bad = [(str(self.videos.full_path(e)), e.problem) for e in self.videos.entries if e.problem]
        entries = self._entries()
        self.num_classes = len(self.videos.classes)
        self.teachers: list[Teacher] = [build_teacher(t, self.videos.classes).to(self.device) for t in cfg.teachers] \
            if self.uses_teachers else []
        pair = self.mode in ("pretrain", "joint")
        self.model: DTGStudent = build_student(
            cfg, {t.name: t.embed_dim for t in self.teachers}, self.num_classes if self.uses_labels else 0,
            self_head=pair and cfg.loss.self_weight > 0).to(self.device)
        self.dataset = self._dataset(entries, pair)
        self.caches = self._teacher_caches()
        self.weighting = build_weighting(cfg.loss, [t.weight for t in cfg.teachers] if self.teachers else []
                                         ).to(self.device)
        self.queues = [torch.zeros(0, t.embed_dim, device=self.device) for t in self.teachers]
        if self.device.type == "cuda" and self.model.temporal == "clip":
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if init:
            self._load_init(init)
        else:
            initialise_backbone(self.model, cfg)
        self.sampler = self._sampler()
        self.local_batch = self.sampler.local_batch
        self.steps_per_epoch = self.sampler.steps_per_epoch
        total = cfg.optim.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total
        self.optimizer, self.scheduler = self._optimizer()
        self.step_module = self._distributed(StepModule(self.model, self.weighting, [t.name for t in self.teachers],
                                                        reverse=cfg.loss.reverse_weight > 0,
                                                        segments=cfg.loss.segment_weight > 0))
        self.forward_model = torch.compile(self.step_module) if cfg.run.compile else self.step_module
        self.step, self.epoch, self.bad_items, self.items_seen = 0, 0, list(self.list_bad), 0
        self.window: dict = {"loss": [], "weights": []}  # the steps since the last log line
        self.last_loss, self.best_loss = None, float("inf")  # logged training loss; best.pt has the lowest
        self.flops_per_step: float | None = None
        self._dataloader: DataLoader | None = None
        self.weight_history: list[list[float]] = []
        self.resumed_from: dict | None = None
        if resume:
            self._resume()
        self.logger = Logger(self.out, enabled=self.dist.main)

    def _entries(self) -> list:
        """The videos this mode trains on: all good ones, or the labelled fraction (semi-supervised joint: the
        labelled ones first, then the rest without labels)."""
        cfg = self.cfg
        entries = self.videos.good
        self.labelled_count = 0  # > 0: semi-supervised joint, the dataset's first videos are the labelled ones
        if not self.uses_labels:
            return entries
        entries = [e for e in entries if e.label >= 0]
        if not entries:
            raise DataError(f"{self.videos.source}: no labelled entries for {self.mode}")
        keep = stratified_subset(np.array([e.label for e in entries]), cfg.data.label_fraction, cfg.run.seed)
        kept = [entries[i] for i in keep]
        if not (self.mode == "joint" and cfg.data.joint_unlabelled):
            return kept
        kept_paths = {e.path for e in kept}  # the rest train the DTG term only
        rest = [dataclasses.replace(e, label=-1) for e in self.videos.good if e.path not in kept_paths]
        if not rest:
            raise DataError(f"{self.videos.source}: data.joint_unlabelled needs videos left without a "
                            f"label; data.label_fraction={cfg.data.label_fraction} labels them all")
        self.labelled_count = len(kept)
        return kept + rest

    def _dataset(self, entries: list, pair: bool) -> VideoDataset:
        cfg = self.cfg
        dataset = VideoDataset(self.videos, "pair" if pair else "single", cfg.data.frames, cfg.data.size,
                               self.model.temporal, cfg.data.stride, reader=reader_for(cfg.data),
                               seed=cfg.run.seed, flip=cfg.data.flip, strong_aug=cfg.data.strong_aug, entries=entries)
        if len(dataset) < cfg.optim.batch_size:
            raise DataError(f"{self.videos.source}: {len(dataset)} usable videos, fewer than "
                            f"optim.batch_size={cfg.optim.batch_size}")
        return dataset

    def _teacher_caches(self):
        """Per-frame teacher embeddings: read from run.teacher_cache_dir, built in memory, or none (online)."""
        cfg = self.cfg
        if self.teachers and cfg.run.teacher_cache_dir:
            return [load_cache(t, tc, self.dataset, cfg.run.teacher_cache_dir)
                    for t, tc in zip(self.teachers, cfg.teachers)]
        if self.teachers and cfg.run.teacher_cache:
            return build_caches(self.teachers, self.dataset, self.device, get_reader(cfg.data.reader),
                                workers=cfg.data.workers, progress=self.progress)
        return None

    def _sampler(self):
        cfg = self.cfg
        if self.labelled_count:
            n_lab = self.labelled_count
            return LabelledShareSampler(
                list(range(n_lab)), list(range(n_lab, len(self.dataset))),
                labelled_per_batch(cfg.data, cfg.optim.batch_size), cfg.run.seed, cfg.optim.batch_size,
                self.dist.rank, self.dist.world)
        return ResumableSampler(len(self.dataset), cfg.run.seed, cfg.optim.batch_size, self.dist.rank,
                                self.dist.world)

    def _optimizer(self):
        """AdamW (backbone at optim.lr, heads and learned weights at head_lr_scale times it), warm-up + cosine."""
        cfg = self.cfg
        backbone = list(self.model.backbone.parameters())
        ids = {id(p) for p in backbone}
        heads = [p for p in self.model.parameters() if id(p) not in ids] + list(self.weighting.parameters())
        optimizer = torch.optim.AdamW(
            [{"params": backbone, "lr": cfg.optim.lr},
             {"params": heads, "lr": cfg.optim.lr * cfg.optim.head_lr_scale}],
            lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=self.device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_lr(s, self.total_steps, cfg.optim.warmup_steps))
        return optimizer, scheduler

    def _distributed(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP over the ranks (synchronised batch norm on GPUs); the module itself in one process."""
        if self.dist.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

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
                                  f"({first_line(e)})") from None

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
                 "weight_history": self.weight_history, "best_loss": self.best_loss,
                 "flops_per_step": self.flops_per_step, "pending": self._pending()}
        best = self.last_loss is not None and self.last_loss < self.best_loss
        if best:
            state["best_loss"] = self.best_loss = self.last_loss
        if self.dist.main:
            try:
                save_rotating(state, self.out / "checkpoints", self.step, self.cfg.run.keep_checkpoints, best)
            except (OSError, DiskFullError) as e:
                why = e if isinstance(e, DiskFullError) else e.strerror or e
                raise CheckpointError(f"could not write the step {self.step} checkpoint in {self.out / 'checkpoints'}"
                                      f" ({why}); the previous checkpoint is intact") from None

    def _resume(self) -> None:
        ckpt, path, skipped = load_newest_readable(self.out / "checkpoints")
        self.resumed_from = {"path": str(path), "step": ckpt.get("step"), "skipped": skipped}
        if skipped and self.dist.main:
            print(f"dtgnet: warning: resuming from {path}, the newest readable checkpoint; passed over: "
                  f"{'; '.join(skipped)}", file=sys.stderr)
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
        self.weight_history, self.best_loss = ckpt["weight_history"], ckpt["best_loss"]
        # counted by the first run: a resumed run must not run its first step under the FLOP counter, which
        # the uninterrupted run did not do at that step (its dispatch can change the result's last bits)
        self.flops_per_step = ckpt.get("flops_per_step")
        self.window.update({k: [t.to(self.device) for t in v] for k, v in (ckpt.get("pending") or {}).items()})
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------------------------------ the step
    def _autocast(self):
        enabled = self.cfg.run.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _teacher_embeddings(self, batch: Batch, per_frame: bool = False) -> tuple[list, list, tuple | None]:
        """Per teacher, ``(B_global, D_k)`` embeddings of views a and b (cached or computed; no gradient);
        ``per_frame``: also each frame's, ``(B_global, T, D_k)`` per teacher and view, else None."""
        if per_frame:
            if self.caches:
                f_a = [c.lookup_frames(batch.index, batch.frames_a).to(self.device) for c in self.caches]
                f_b = [c.lookup_frames(batch.index, batch.frames_b).to(self.device) for c in self.caches]
            else:
                f_a = [t.per_frame(batch.a) for t in self.teachers]
                f_b = [t.per_frame(batch.b) for t in self.teachers]
            t_a, t_b = [f.mean(1) for f in f_a], [f.mean(1) for f in f_b]
        elif self.caches:
            t_a = [c.lookup(batch.index, batch.frames_a).to(self.device) for c in self.caches]
            t_b = [c.lookup(batch.index, batch.frames_b).to(self.device) for c in self.caches]
        else:
            t_a = [t(batch.a) for t in self.teachers]
            t_b = [t(batch.b) for t in self.teachers]
        every = lambda ts: [gather(t, self.dist, False) for t in ts]  # noqa: E731
        return every(t_a), every(t_b), (every(f_a), every(f_b)) if per_frame else None

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, pair = self.cfg, batch.b is not None
        g = lambda x: gather(x.float(), self.dist, with_grad=True)  # noqa: E731  every rank sees the global batch
        with self._autocast():
            segment = cfg.loss.segment_weight > 0
            t_a, t_b, frames = self._teacher_embeddings(batch, segment) if pair else ([], [], None)
            if t_a:
                self.weighting.update(t_a, t_b)
            out = self.forward_model(batch.a, batch.b)
        stats: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=self.device)
        if self.uses_labels:
            labelled = (batch.label >= 0).float()  # (B,); all ones unless data.joint_unlabelled
            per_item = F.cross_entropy(out["logits"].float(), batch.label.clamp(min=0), reduction="none")
            stats["ce"] = (per_item * labelled).sum() / labelled.sum().clamp(min=1)
            loss = loss + stats["ce"]
        if pair:
            res = dtg_loss(g(out["self_a"]) if "self_a" in out else None, g(out["self_b"]) if "self_b" in out else None,
                           [g(u) for u in out["heads_a"]], [g(u) for u in out["heads_b"]], t_a, t_b,
                           out["weights"], cfg.loss.self_weight, cfg.loss.form, cfg.loss.tau, cfg.loss.margin,
                           self.queues if cfg.loss.queue_size else None, cfg.loss.regression_weight,
                           cfg.loss.relational_weight, cfg.loss.relational_tau, cfg.loss.reverse_weight,
                           g(out["self_reversed"]) if "self_reversed" in out else None, cfg.loss.segment_weight,
                           ([g(u) for u in out["segments_a"]], [g(u) for u in out["segments_b"]], *frames)
                           if segment else None)
            stats["dtg"], stats["self"] = res.total, res.self_term
            stats.update({f"teacher/{t.name}": term for t, term in zip(self.teachers, res.teacher_terms)})
            dtg = res.total + out["reg"]
            loss = loss + (cfg.loss.joint_lambda * dtg if self.uses_labels else dtg)
            if cfg.loss.queue_size:  # frozen teachers: past embeddings stay valid negatives
                self.queues = [torch.cat([a, b, q])[:cfg.loss.queue_size] for a, b, q in zip(t_a, t_b, self.queues)]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        stats["loss"] = loss.detach()
        return {k: v.detach() for k, v in stats.items()}

    # ------------------------------------------------------------------------------------------ the loop
    def loader(self, start: int) -> DataLoader:
        """The run's DataLoader, positioned ``start`` steps into the current epoch. It is built once: the
        sampler runs in this process and hands (epoch, index) to the workers, so they can persist."""
        self.sampler.set_position(self.epoch, start * self.local_batch)
        if self._dataloader is None:
            nw = self.cfg.data.workers
            self._dataloader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=self.sampler,
                                          collate_fn=collate_views, num_workers=nw, drop_last=True, pin_memory=self.device.type == "cuda",
                                          persistent_workers=nw > 0, prefetch_factor=4 if nw else None,
                                          worker_init_fn=_worker_exits_quietly if nw else None,
                                          # its own generator: starting an epoch must not draw from the global
                                          # RNG that dropout / stochastic depth use, or a resume would diverge
                                          generator=torch.Generator().manual_seed(self.cfg.run.seed))
        return self._dataloader

    def _batches(self, start: int):
        """The loader's batches; once a preemption signal has arrived, a loader whose workers it took down
        yields None (stop here) instead of failing."""
        batches = iter(self.loader(start))
        while True:
            try:
                yield next(batches)
            except StopIteration:
                return
            except RuntimeError:
                if self.stop_signal is None:
                    raise
                yield None
                return

    def to_batch(self, raw: dict) -> Batch:
        nb = self.device.type == "cuda"
        a, b = finish_views(raw, self.device, nb)
        frames = torch.from_numpy(raw["frames"])  # (V, B, T)
        return Batch(a, b, torch.from_numpy(raw["label"]).to(self.device, non_blocking=nb),
                     torch.from_numpy(raw["index"]), frames[0], frames[1] if len(frames) > 1 else None)

    def _count_bad(self, raw: dict | None) -> bool:
        """Count the batch's unreadable items (stop past ``data.max_bad_fraction``) and say whether a
        preemption signal, received by any rank, stops the run before this batch. One all-reduce gives
        every rank the same answers."""
        raw = raw or {"bad": [], "index": []}  # no batch: the loader went down with a preemption signal
        new = [tuple(line.split("\t", 1)) for text in raw["bad"] for line in filter(None, text.split("\n"))]
        seen = len(raw["index"])
        preempt = self.stop_signal is not None
        if self.dist.world > 1:
            import torch.distributed as dist

            counts = torch.tensor([seen, len(new), int(preempt)], device=self.device)
            dist.all_reduce(counts)
            seen, n_bad, preempt = counts.tolist()
            if n_bad and not preempt:
                gathered: list = [None] * self.dist.world
                dist.all_gather_object(gathered, new)
                new = [item for part in gathered for item in part]
        if preempt:  # the batch is dropped: the resumed run reads it again
            return True
        self.items_seen += seen
        for path, reason in new:
            self.bad_items.append((path, reason))
            self.logger.log({"event": "bad_item", "step": self.step, "path": path, "reason": reason})
        attempted = self.items_seen + len(self.bad_items)
        frac = len(self.bad_items) / max(attempted, 1)
        if len(self.bad_items) and attempted >= 20 and frac > self.cfg.data.max_bad_fraction:
            self._check_finite()
            self._checkpoint()
            raise TooManyBadItems(
                f"{len(self.bad_items)} of {attempted} items were unreadable ({frac:.1%} > "
                f"data.max_bad_fraction={self.cfg.data.max_bad_fraction}); first: {self.bad_items[0][0]}: "
                f"{self.bad_items[0][1]}. Progress saved in {self.out / 'checkpoints' / 'last.pt'}")
        return False

    @contextmanager
    def _preemption_handlers(self):
        """SIGTERM / SIGUSR1 only set a flag; the loop acts on it between steps."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def note(signum, _frame):
            self.stop_signal = signum

        previous = {sig: signal.signal(sig, note) for sig in PREEMPT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _preempt(self) -> None:
        """Checkpoint the last finished step and stop; every rank waits until rank 0's file is on disk."""
        self._check_finite()
        self._checkpoint()
        what = signal.Signals(self.stop_signal).name if self.stop_signal else "a preemption signal to another rank"
        self.logger.log({"event": "preempted", "signal": what, "step": self.step})
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.barrier()
        raise Preempted(f"{what} at step {self.step}: checkpoint written to {self.out / 'checkpoints' / 'last.pt'}")

    def fit(self) -> dict:
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.mode} {self.out.name}",
                   disable=not self.progress, unit="step", dynamic_ncols=True)
        try:
            self.model.train()
            self.logger.log({"event": "start", "mode": self.mode, "device": str(self.device),
                             "videos": len(self.dataset), "steps": self.total_steps,
                             "list_bad": len(self.list_bad)})
            if self.resumed_from:
                self.logger.log({"event": "resume", **self.resumed_from})
            for path, reason in self.list_bad:
                self.logger.log({"event": "bad_item", "step": 0, "path": path, "reason": reason})
            window = self.window = {"t0": time.perf_counter(), "wait": 0.0, "clips": 0,
                                    "loss": self.window["loss"], "weights": self.window["weights"]}
            with self._preemption_handlers():
                self._loop(window, bar)
            self._checkpoint()
            return self._finish()
        finally:
            bar.close()
            self.close()

    def _loop(self, window: dict, bar) -> None:
        cfg = self.cfg
        while self.step < self.total_steps:
            start = self.step - self.epoch * self.steps_per_epoch
            t_wait = time.perf_counter()
            for raw in self._batches(start):
                window["wait"] += time.perf_counter() - t_wait
                if self._count_bad(raw):
                    self._preempt()
                if self.flops_per_step is None and not cfg.run.compile:  # count once, on the first step
                    from torch.utils.flop_counter import FlopCounterMode

                    with FlopCounterMode(display=False) as counter:
                        out = self.train_step(self.to_batch(raw))
                    self.flops_per_step = counter.get_total_flops() * self.dist.world
                else:
                    out = self.train_step(self.to_batch(raw))
                self.step += 1
                window["clips"] += raw["views"].shape[:2].numel() * self.dist.world
                window["loss"].append(out["loss"])
                if self.teachers:  # every step's effective weights, read back at the next log step
                    window["weights"].append(self.weighting.weights().detach())
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                    self._log_window(out, window, bar)
                if self.step % cfg.run.checkpoint_every == 0 and self.step < self.total_steps:
                    self._check_finite()
                    self._checkpoint()
                if self.step >= self.total_steps:
                    break
                t_wait = time.perf_counter()
            self.epoch = self.step // self.steps_per_epoch

    def _pending(self) -> dict[str, list[torch.Tensor]]:
        """The losses and weights of the steps since the last log line: a checkpoint keeps them, so that a
        resumed run logs the same loss and weight history as an uninterrupted one."""
        return {k: [t.detach().cpu() for t in self.window[k]] for k in ("loss", "weights")}

    def _check_finite(self) -> None:
        """Raise on a non-finite loss among the steps since the last check (one host sync)."""
        if not self.window["loss"]:
            return
        losses = torch.stack(self.window["loss"]).float()
        if not torch.isfinite(losses).all():
            bad_step = self.step - len(losses) + int((~torch.isfinite(losses)).nonzero()[0])
            raise NonFiniteLoss(f"non-finite loss at step {bad_step + 1}; the last good checkpoint is "
                                f"{self.out / 'checkpoints' / 'last.pt'}")

    def _log_window(self, out, window, bar) -> None:
        self._check_finite()
        losses = torch.stack(window["loss"]).float()
        elapsed = time.perf_counter() - window["t0"]
        if window["weights"]:
            per_step = torch.stack(window["weights"]).float().cpu().tolist()  # (steps, K)
            first = self.step - len(per_step) + 1
            self.weight_history += [[first + i] + w for i, w in enumerate(per_step)]
        weights = self.weighting.weights().detach().float().cpu().tolist()
        self.last_loss = losses.mean().item()
        record = {"step": self.step, "epoch": self.epoch, "loss": self.last_loss,
                  "lr": self.scheduler.get_last_lr()[0], "clips_per_s": window["clips"] / max(elapsed, 1e-9),
                  "data_wait_frac": window["wait"] / max(elapsed, 1e-9), "bad_items": len(self.bad_items),
                  "tflops": (self.flops_per_step or 0) * len(losses) / max(elapsed, 1e-9) / 1e12}
        if self.cfg.run.peak_tflops:
            record["mfu"] = record["tflops"] / self.cfg.run.peak_tflops
        record.update({k: v.item() for k, v in out.items() if k != "loss"})
        if self.teachers:
            record["weights"] = {t.name: w for t, w in zip(self.teachers, weights)}
        self.logger.log(record, step=self.step)
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
        window.update(t0=time.perf_counter(), wait=0.0, clips=0, loss=[], weights=[])

    def _finish(self) -> dict:
        weights = self.weighting.weights().detach().float().cpu().tolist()
        if not self.dist.main:
            return {"mode": self.mode, "steps": self.step}
        metrics = {"mode": self.mode, "steps": self.step, "videos": len(self.dataset),
                   "bad_items": [{"path": p, "reason": r} for p, r in self.bad_items],
                   "teacher_weights": {t.name: w for t, w in zip(self.teachers, weights)},
                   "teacher_weight_history": self.weight_history,
                   "final_loss": self.last_loss}
        save_student_safetensors(self.model, self.out / "student.safetensors", self._meta())
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def train(cfg: Config, mode: str, init: str | None = None, resume: bool | str = False, force: bool = False,
          progress: bool = True) -> dict:
    """Run one training job; returns its metrics (also written to ``run.out/metrics.json``)."""
    return Trainer(cfg, mode, init, resume, force, progress).fit()

