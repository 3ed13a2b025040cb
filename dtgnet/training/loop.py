"""One training loop for the three modes.

* ``pretrain`` (mode i): DTG loss on two views per video; labels are never read.
* ``finetune``: cross-entropy on a fraction of the labels, from a pre-trained checkpoint or from scratch.
* ``joint`` (mode ii): ``CE(classifier(f(x^a)), y) + lambda * L_DTG``, end to end.

A step (:meth:`Trainer.train_step`) reads top to bottom: batch -> teacher embeddings (online or cached) ->
student -> objective -> backward -> optimiser step; :meth:`Trainer.fit` wraps it with data loading,
logging, checkpoints and preemption. SIGTERM or SIGUSR1 (a cluster's preemption notice) lets the step in
progress finish, writes a checkpoint on every rank's behalf and stops with :class:`~dtgnet.errors.Preempted`
(exit status 75 from the CLI).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import Config, labelled_per_batch, same_config, save_config, to_dict
from ..data.dataset import VideoDataset, collate_views, finish_views, stratified_subset
from ..data.lists import VideoList, load_split
from ..data.prepare import reader_for
from ..data.samplers import LabelledShareSampler, ResumableSampler
from ..data.video import get_reader
from ..dist import init_distributed
from ..errors import CheckpointError, ConfigError, DataError, DtgError, Preempted, first_line, raised_in_worker
from ..io import DiskFullError, load_checkpoint
from ..objectives import DTGObjective
from ..objectives.objective import StudentOutputs, TeacherEmbeddings
from ..students import DTGStudent, build_student, initialise_backbone, save_student_safetensors
from ..teachers import Teacher, build_teacher
from ..teachers.cache import (
    DeviceRows,
    TokenGrid,
    build_caches,
    cached_tokens,
    image_teachers,
    load_cache,
    token_grid_config,
)
from .checkpoint import config_hash, load_newest_readable, rng_state, save_rotating, set_rng_state
from .gradcache import cached_backward
from .run_state import BadItems, NonFiniteLoss, Preemption, StepWindow, worker_exits_quietly
from .runlog import Logger, RunDir

MODES = ("pretrain", "finetune", "joint")
__all__ = ["MODES", "Batch", "NonFiniteLoss", "StepModule", "Trainer", "cosine_lr", "pick_device", "train"]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
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


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak LR: linear warm-up, then cosine decay to 1 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Batch:
    a: torch.Tensor
    """``(B, T, 3, H, W)`` view a, on the device."""
    b: torch.Tensor | None
    """View b (pre-training and joint), else None."""
    label: torch.Tensor
    """``(B,)``; -1 for an unlabelled video (semi-supervised joint)."""
    index: torch.Tensor
    """``(B,)`` dataset indices (the teacher cache's lookup key)."""
    frames_a: torch.Tensor
    """``(B, T)`` source frame numbers of view a (the cache's other key)."""
    frames_b: torch.Tensor | None
    geometry_a: torch.Tensor | None = None
    """``(B, 6)`` where view a's crop lies in its frames (:data:`~dtgnet.data.transforms.GEOMETRY`): a cached
    token grid is cut along it."""
    geometry_b: torch.Tensor | None = None


class StepModule(torch.nn.Module):
    """Everything trainable (student, heads, classifier, learned teacher weights) behind one forward, so a
    DistributedDataParallel wrapper synchronises all of it. ``masked``: the paired views go through the
    student's masked encoding (visible tokens only, :meth:`~dtgnet.students.vit.VideoViT.masked`)."""

    def __init__(self, student: DTGStudent, objective: DTGObjective | None, teacher_names: list[str],
                 masked: bool = False):
        super().__init__()
        self.student, self.objective, self.teacher_names, self.masked = student, objective, teacher_names, masked

    def forward(self, a: torch.Tensor, b: torch.Tensor | None, visible: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, StudentOutputs | None]:
        """(classifier logits of view a or None, the objective's student outputs or None)."""
        return self.heads(self.embed(a, b, visible), paired=b is not None)

    def view_count(self) -> int:
        """Views a paired step encodes: a and b, and a played backwards for the time-arrow term."""
        return 3 if self.objective.needs_reverse else 2

    def embed(self, a: torch.Tensor, b: torch.Tensor | None, visible: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's features of every view the step needs, ``(V, B, D)`` (``(V, B, T, D)``: each segment's,
        for per-segment terms; ``(V, B, 1 + M, D)``: masked, the pooled feature then the M visible tokens, given
        ``visible`` ``(B, V, M)`` token indices): view a; with b, views a and b (and a played backwards for the
        time-arrow term)."""
        o = self.objective
        if b is None:
            return self.student(a)[None]  # (1, B, D)
        # every view in one pass; (B, T, 3, H, W) views, so a backwards is a.flip(1)
        views = [a, b, a.flip(1)] if o.needs_reverse else [a, b]
        x = torch.cat(views)  # (V*B, T, 3, H, W)
        if self.masked:
            features = self.student.backbone.masked(x, visible.transpose(0, 1).flatten(0, 1))  # (V*B, 1+M, D)
        else:
            features = self.student.backbone.per_segment(x) if o.needs_segments else self.student(x)
        return features.unflatten(0, (len(views), -1))

    def heads(self, features: torch.Tensor, paired: bool) -> tuple[torch.Tensor | None, StudentOutputs | None]:
        """The classifier's and the objective's outputs from :meth:`embed`'s features (whole-batch batch norm
        in the heads, also when the backbone ran in micro-batches)."""
        s, o = self.student, self.objective
        tokens = features[:, :, 1:] if self.masked and paired else None  # (V, B, M, D) visible tokens
        steps = features if features.dim() == 4 and tokens is None else None  # (V, B, T, D) per-segment features
        pooled = features[:, :, 0] if tokens is not None else steps.mean(2) if steps is not None else features
        f_a = pooled[0]  # pooled: (V, B, D)
        logits = s.classifier(f_a) if s.classifier is not None else None
        if not paired:
            return logits, None
        f_b, rest = pooled[1], pooled[2:]
        # heads in a fixed order: autograd sums the gradients reaching f_a in the reverse of it
        weights, regulariser = o.weighting.weights(), o.weighting.regulariser()
        self_a = self_b = self_reversed = None
        if s.self_head is not None:
            self_a, self_b = s.self_head(f_a), s.self_head(f_b)
            self_reversed = s.self_head(rest[0]) if len(rest) else None
        # no clip heads where no clip-level term reads them (token terms alone)
        heads = [s.teacher_heads[n] for n in self.teacher_names] if len(s.teacher_heads) else []
        none = [None] * len(self.teacher_names)
        out = StudentOutputs(weights, regulariser, [h(f_a) for h in heads] or none, [h(f_b) for h in heads] or none,
                             self_a, self_b, self_reversed)
        if o.needs_tokens:
            out.tokens_a = [s.token_heads[n](tokens[0]) for n in self.teacher_names]  # K x (B, M, C_k)
            out.tokens_b = [s.token_heads[n](tokens[1]) for n in self.teacher_names]
        if steps is not None:
            seg_a, seg_b = steps[0].flatten(0, 1), steps[1].flatten(0, 1)  # (B*T, D) per view
            out.segments_a = [h(seg_a).unflatten(0, steps.shape[1:3]) for h in heads]
            out.segments_b = [h(seg_b).unflatten(0, steps.shape[1:3]) for h in heads]
        return logits, out


def resume_mode(resume: bool | str) -> str:
    """``False``/``True`` (the CLI's bare ``--resume``) or a :data:`~dtgnet.training.runlog.RESUME_MODES` name."""
    return {False: "never", True: "always"}.get(resume, resume) if isinstance(resume, bool) else resume


class Trainer:
    def __init__(self, cfg: Config, mode: str, init: str | None = None, resume: bool | str = False,
                 force: bool = False, progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.cfg, self.mode = cfg, mode
        self.preemption = Preemption()
        self.dist = init_distributed(cfg.run.dist_timeout_s)
        self.progress = progress and self.dist.main
        if cfg.optim.batch_size % self.dist.world:
            raise ConfigError("optim.batch_size", f"{cfg.optim.batch_size} is not divisible by the "
                                                  f"{self.dist.world} processes")
        self.device = pick_device(cfg.run.device, self.dist.local_rank)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.out = Path(cfg.run.out)
        self.run_dir = None
        self.videos: VideoList = load_split(cfg.data, "train")
        self.videos.require_present()  # a wrong data.root stops here, before any directory is made
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
        message, resuming = self.dist.broadcast_objects([str(failure) if failure else "", resuming])
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

    @property
    def weighting(self) -> torch.nn.Module:
        return self.objective.weighting

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self, init, resume):
        """The run's parts, built in a fixed order (the RNG draws of each part depend on it)."""
        cfg = self.cfg
        seed_everything(cfg.run.seed)
        if not resume and self.dist.main:
            save_config(cfg, self.out / "config.yaml")
        self.uses_labels = self.mode in ("finetune", "joint")
        self.uses_teachers = self.mode in ("pretrain", "joint")
        self.list_bad = [(str(self.videos.full_path(e)), e.problem) for e in self.videos.entries if e.problem]
        entries = self._entries()
        self.num_classes = len(self.videos.classes)
        self.teachers: list[Teacher] = [build_teacher(t, self.videos.classes).to(self.device) for t in cfg.teachers] \
            if self.uses_teachers else []
        pair = self.mode in ("pretrain", "joint")
        tokens = cfg.loss.token_weight > 0 and bool(self.teachers)
        self.model: DTGStudent = build_student(
            cfg, {t.name: t.embed_dim for t in self.teachers} if cfg.loss.clip_heads else {},
            self.num_classes if self.uses_labels else 0, self_head=pair and cfg.loss.self_weight > 0,
            token_dims={t.name: t.token_dim for t in self.teachers} if tokens else None).to(self.device)
        # the paired views are encoded token by token: masked, or for token distillation
        self.masked = pair and (cfg.student.mask_ratio > 0 or tokens)
        self.dataset = self._dataset(entries, pair)
        self.caches, self.token_caches = self._teacher_caches()
        self.objective = DTGObjective(cfg.loss, [t.weight for t in cfg.teachers] if self.teachers else [],
                                      [t.embed_dim for t in self.teachers], self.device).to(self.device)
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
        self.step_module = self.dist.wrap(StepModule(self.model, self.objective, [t.name for t in self.teachers],
                                                     self.masked), self.device)
        self.forward_model = torch.compile(self.step_module) if cfg.run.compile else self.step_module
        if cfg.optim.micro_batch and not cfg.student.freeze_bn and self.dist.main and any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.backbone.modules()):
            print(f"dtgnet: warning: {cfg.student.arch}'s batch norm normalises each micro-batch of "
                  f"{cfg.optim.micro_batch} by its own statistics, so the gradients are not the whole batch's; "
                  f"student.freeze_bn=true makes them so (docs/TRAINING.md)", file=sys.stderr, flush=True)
        self.step, self.epoch = 0, 0
        self.bad = BadItems(self.list_bad)
        self.window = StepWindow()
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

    def _teacher_caches(self) -> tuple[list, list]:
        """Per teacher, its per-frame clip embeddings and (``run.token_cache_grid``) its pooled token grids, read
        from run.teacher_cache_dir or built in memory in one decode; None where it runs online: every teacher
        without a cache, video teachers always."""
        cfg = self.cfg
        clip, tokens = [None] * len(self.teachers), [None] * len(self.teachers)  # no teachers: fine-tuning
        if not self.teachers or not (cfg.run.teacher_cache or cfg.run.teacher_cache_dir):
            return clip, tokens
        cacheable = {id(tc) for tc in image_teachers(cfg.teachers)}
        image = [k for k, tc in enumerate(cfg.teachers) if id(tc) in cacheable]
        side = cfg.run.token_cache_grid
        wanted = [(clip, k, self.teachers[k], cfg.teachers[k]) for k in image]  # (slots, teacher number, ...)
        if side:
            wanted += [(tokens, k, TokenGrid(self.teachers[k], side), token_grid_config(cfg.teachers[k], side))
                       for k in image]
        if cfg.run.teacher_cache_dir:
            for slots, k, teacher, tc in wanted:
                slots[k] = load_cache(teacher, tc, self.dataset, cfg.run.teacher_cache_dir)
        elif wanted:
            built = build_caches([teacher for _, _, teacher, _ in wanted], self.dataset, self.device,
                                 get_reader(cfg.data.reader), workers=cfg.data.workers, progress=self.progress)
            for (slots, k, _, _), cache in zip(wanted, built):
                slots[k] = cache
        if self.device.type == "cuda":  # token grids are large: gathered on the GPU when they fit in a quarter of it
            free = torch.cuda.mem_get_info(self.device)[0]
            for k, cache in enumerate(tokens):
                if cache is not None and cache.nbytes < free / 4:
                    tokens[k] = DeviceRows(cache, self.device)
        return clip, tokens

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
        heads = [p for p in self.model.parameters() if id(p) not in ids] + list(self.objective.weighting.parameters())
        optimizer = torch.optim.AdamW(
            [{"params": backbone, "lr": cfg.optim.lr},
             {"params": heads, "lr": cfg.optim.lr * cfg.optim.head_lr_scale}],
            lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=self.device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_lr(s, self.total_steps, cfg.optim.warmup_steps))
        return optimizer, scheduler

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
        return {"config": to_dict(self.cfg), "mode": self.mode,
                "teacher_heads": {n: h[-1].out_features for n, h in self.model.teacher_heads.items()},
                "token_heads": {n: h.out_features for n, h in (self.model.token_heads or {}).items()},
                "num_classes": self.num_classes if self.uses_labels else 0,
                "self_head": self.model.self_head is not None, "classes": self.videos.classes}

    def _checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), **self.objective.state(),
                 "step": self.step, "epoch": self.epoch, "rng": rng_state(),
                 "config_hash": config_hash(to_dict(self.cfg)), "meta": self._meta(),
                 "bad_items": self.bad.items, "items_seen": self.bad.seen,
                 "weight_history": self.weight_history, "best_loss": self.best_loss,
                 "flops_per_step": self.flops_per_step, "pending": self.window.pending()}
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
        if ckpt.get("config_hash") != config_hash(to_dict(self.cfg)) and not same_config(
                ckpt.get("meta", {}).get("config"), to_dict(self.cfg)):
            raise CheckpointError(f"{self.out}: the config differs from the one the run started with; "
                                  f"resume with the run's own config.yaml")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.objective.load_state(ckpt, self.device)
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.bad.items, self.bad.seen = ckpt["bad_items"], ckpt["items_seen"]
        self.weight_history, self.best_loss = ckpt["weight_history"], ckpt["best_loss"]
        # counted by the first run: a resumed run must not run its first step under the FLOP counter, which
        # the uninterrupted run did not do at that step (its dispatch can change the result's last bits)
        self.flops_per_step = ckpt.get("flops_per_step")
        self.window.restore(ckpt.get("pending"), self.device)
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------------------------------ the step
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimiser step on one batch; returns the step's loss and terms (detached)."""
        stats = self.backward(batch)
        self.optimizer.step()
        self.scheduler.step()
        return stats

    def backward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's parameter gradients (zeroed first) and its loss and terms (detached); with
        ``optim.micro_batch``, through GradCache: the same gradients from a micro-batch's activations."""
        cfg, stats = self.cfg, {}
        autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16,  # noqa: E731
                                          enabled=cfg.run.amp and self.device.type == "cuda")
        visible = self.draw_visible(batch) if self.masked and batch.b is not None else None
        with autocast():
            teacher = self.teacher_embeddings(batch, visible=visible) if batch.b is not None else None  # no grad
            if teacher is not None and self.teachers:
                self.objective.observe(teacher)  # adaptive weights score this batch first
        self.optimizer.zero_grad(set_to_none=True)
        micro = cfg.optim.micro_batch
        if micro and micro < batch.a.shape[0]:
            module = getattr(self.step_module, "module", self.step_module)  # DDP's own hooks stay idle

            def embed(a, b, visible):
                with autocast():
                    return module.embed(a, b, visible)

            def loss_of(features):
                with autocast():
                    outputs = module.heads(features, paired=batch.b is not None)
                return self.loss(batch, *outputs, teacher, stats)

            stats["loss"] = cached_backward(embed, loss_of, (batch.a, batch.b, visible), micro, module)
            self.dist.average_gradients(self.optimizer)
        else:
            with autocast():
                outputs = self.forward_model(batch.a, batch.b, visible)
            loss = self.loss(batch, *outputs, teacher, stats)
            loss.backward()
            stats["loss"] = loss.detach()
        return {k: v.detach() for k, v in stats.items()}

    def loss(self, batch: Batch, logits: torch.Tensor | None, student: StudentOutputs | None,
             teacher: TeacherEmbeddings | None, stats: dict) -> torch.Tensor:
        """The step's loss from the model's outputs over this process's batch (its terms go into ``stats``):
        cross-entropy on the labelled videos and/or ``L_DTG`` over the global batch."""
        cfg = self.cfg
        loss = torch.zeros((), device=self.device)
        if self.uses_labels:
            labelled = (batch.label >= 0).float()  # (B,); all ones unless data.joint_unlabelled
            per_item = F.cross_entropy(logits.float(), batch.label.clamp(min=0), reduction="none")  # (B,)
            stats["ce"] = (per_item * labelled).sum() / labelled.sum().clamp(min=1)
            loss = loss + stats["ce"]
        if student is not None:
            dtg = self.objective(self._global(student), teacher)
            stats["dtg"], stats["self"] = dtg.total, dtg.self_term
            stats.update({f"teacher/{t.name}": term for t, term in zip(self.teachers, dtg.teacher_terms)})
            total = dtg.total + student.regulariser
            loss = loss + (cfg.loss.joint_lambda * total if self.uses_labels else total)
        return loss

    def draw_visible(self, batch: Batch) -> torch.Tensor:
        """``(B, V, M)`` indices of each view's visible tokens (all of them at ``student.mask_ratio`` 0)."""
        s = self.cfg.student
        views = getattr(self.step_module, "module", self.step_module).view_count()
        visible = self.model.backbone.draw_visible(batch.a.shape[0] * views, s.mask_ratio, s.mask_type)  # (B*V, M)
        return visible.unflatten(0, (-1, views)).to(self.device)

    def teacher_embeddings(self, batch: Batch, per_frame: bool | None = None,
                           visible: torch.Tensor | None = None) -> TeacherEmbeddings:
        """Every teacher's embeddings of both views over the global batch: looked up in the cache or computed
        (no gradient); each frame's too with ``per_frame`` (default: when the objective has per-segment terms);
        with token terms, each teacher's tokens at the places of ``visible`` ``(B, V, M)`` (:meth:`draw_visible`)."""
        out = self._clip_embeddings(batch, self.objective.needs_segments if per_frame is None else per_frame)
        if self.objective.needs_tokens:
            out.tokens_a, out.tokens_b = (self._every([self._teacher_tokens(k, batch, v, visible[:, v])
                                                       for k in range(len(self.teachers))]) for v in range(2))
        return out

    def _clip_embeddings(self, batch: Batch, per_frame: bool) -> TeacherEmbeddings:
        """Each teacher's embeddings of both views: looked up in its cache, or computed online."""
        def views(teacher: Teacher, cache, frames: bool) -> list[torch.Tensor]:
            if cache is None:
                return [teacher.per_frame(v) if frames else teacher(v) for v in (batch.a, batch.b)]
            lookup = cache.lookup_frames if frames else cache.lookup
            return [lookup(batch.index, f).to(self.device) for f in (batch.frames_a, batch.frames_b)]

        pairs = [views(t, c, per_frame) for t, c in zip(self.teachers, self.caches)]
        t_a, t_b = [a for a, _ in pairs], [b for _, b in pairs]
        if per_frame:  # (B, T, D) per teacher; the clip embedding is their mean
            every = self._every
            return TeacherEmbeddings(every([f.mean(1) for f in t_a]), every([f.mean(1) for f in t_b]),
                                     every(t_a), every(t_b))
        return TeacherEmbeddings(self._every(t_a), self._every(t_b))

    def _teacher_tokens(self, k: int, batch: Batch, v: int, visible: torch.Tensor) -> torch.Tensor:
        """``(B, M, C)``: teacher ``k``'s tokens of view ``v`` (0: a, 1: b) on the student's grid at the ``(B, M)``
        visible places: computed on the view, or cut from the teacher's token cache along the view's crop."""
        backbone, teacher, cache = self.model.backbone, self.teachers[k], self.token_caches[k]
        view, frames, geometry = ((batch.a, batch.frames_a, batch.geometry_a) if v == 0
                                  else (batch.b, batch.frames_b, batch.geometry_b))
        if cache is None:
            tokens = teacher.sequence_tokens(view, backbone.tubelet, backbone.grid[1:])  # (B, N, C)
        else:
            tokens = cached_tokens(cache, batch.index, frames, geometry, backbone.tubelet, backbone.grid[1:],
                                   teacher.token_dim, self.device)
        return tokens.gather(1, visible[..., None].expand(-1, -1, tokens.shape[-1]))

    def _every(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.dist.gather(t, with_grad=False) for t in tensors]

    def _global(self, out: StudentOutputs) -> StudentOutputs:
        """Every rank's student outputs concatenated (gradients flow back to the own rows), in float32."""
        g = lambda x: None if x is None else self.dist.gather(x.float(), with_grad=True)  # noqa: E731
        gl = lambda xs: None if xs is None else [g(x) for x in xs]  # noqa: E731
        return StudentOutputs(out.weights, out.regulariser, gl(out.heads_a), gl(out.heads_b), g(out.self_a),
                              g(out.self_b), g(out.self_reversed), gl(out.segments_a), gl(out.segments_b),
                              gl(out.tokens_a), gl(out.tokens_b))

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
                                          worker_init_fn=worker_exits_quietly if nw else None,
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
            except DtgError as e:  # raised in a worker: the message it was raised with, not the worker's traceback
                raise raised_in_worker(e) from None
            except RuntimeError:
                if not self._signal_on_its_way():
                    raise
                yield None
                return

    def _signal_on_its_way(self, wait_s: float = 3.0) -> bool:
        """Whether a preemption signal explains a failed loader. A scheduler signals the whole process group at
        once, and a worker may die of it (and the loader notice) a moment before this process runs its own
        handler: wait that moment out."""
        deadline = time.monotonic() + wait_s
        while not self.preemption.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.preemption.requested

    def to_batch(self, raw: dict) -> Batch:
        nb = self.device.type == "cuda"
        a, b = finish_views(raw, self.device, nb)
        frames, geometry = torch.from_numpy(raw["frames"]), torch.from_numpy(raw["geometry"])  # (V, B, T), (V, B, 6)
        second = len(frames) > 1
        return Batch(a, b, torch.from_numpy(raw["label"]).to(self.device, non_blocking=nb),
                     torch.from_numpy(raw["index"]), frames[0], frames[1] if second else None,
                     geometry[0], geometry[1] if second else None)

    def _count_bad(self, raw: dict | None) -> bool:
        """Count the batch's unreadable items (stop past ``data.max_bad_fraction``) and say whether a
        preemption signal, received by any rank, stops the run before this batch."""
        stop, new = self.bad.count(raw, self.dist, self.device, self.preemption.requested)
        for path, reason in new:
            self.logger.log({"event": "bad_item", "step": self.step, "path": path, "reason": reason})
        if not stop and self.bad.too_many(self.cfg.data.max_bad_fraction):
            self.window.check_finite(self.step, self.last_checkpoint)
            self._checkpoint()
            raise self.bad.error(self.cfg.data.max_bad_fraction, self.last_checkpoint)
        return stop

    def _preempt(self) -> None:
        """Checkpoint the last finished step and stop; every rank waits until rank 0's file is on disk."""
        self.window.check_finite(self.step, self.last_checkpoint)
        self._checkpoint()
        what = self.preemption.describe()
        self.logger.log({"event": "preempted", "signal": what, "step": self.step})
        self.dist.barrier()
        raise Preempted(f"{what} at step {self.step}: checkpoint written to {self.last_checkpoint}")

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
            self.window.restart()
            with self.preemption.handlers():
                self._loop(bar)
            self._checkpoint()
            return self._finish()
        finally:
            bar.close()
            self.close()

    def _loop(self, bar) -> None:
        cfg, window = self.cfg, self.window
        while self.step < self.total_steps:
            start = self.step - self.epoch * self.steps_per_epoch
            t_wait = time.perf_counter()
            for raw in self._batches(start):
                window.wait += time.perf_counter() - t_wait
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
                window.clips += raw["views"].shape[:2].numel() * self.dist.world
                window.loss.append(out["loss"])
                if self.teachers:  # every step's effective weights, read back at the next log step
                    window.weights.append(self.weighting.weights().detach())
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                    self._log_window(out, bar)
                if self.step % cfg.run.checkpoint_every == 0 and self.step < self.total_steps:
                    window.check_finite(self.step, self.last_checkpoint)
                    self._checkpoint()
                if self.step >= self.total_steps:
                    break
                t_wait = time.perf_counter()
            self.epoch = self.step // self.steps_per_epoch

    def _log_window(self, out, bar) -> None:
        window = self.window
        window.check_finite(self.step, self.last_checkpoint)
        losses = torch.stack(window.loss).float()
        elapsed = time.perf_counter() - window.t0
        if window.weights:
            per_step = torch.stack(window.weights).float().cpu().tolist()  # (steps, K)
            first = self.step - len(per_step) + 1
            self.weight_history += [[first + i] + w for i, w in enumerate(per_step)]
        weights = self.weighting.weights().detach().float().cpu().tolist()
        self.last_loss = losses.mean().item()
        record = {"step": self.step, "epoch": self.epoch, "loss": self.last_loss,
                  "lr": self.scheduler.get_last_lr()[0], "clips_per_s": window.clips / max(elapsed, 1e-9),
                  "data_wait_frac": window.wait / max(elapsed, 1e-9), "bad_items": len(self.bad.items),
                  "tflops": (self.flops_per_step or 0) * len(losses) / max(elapsed, 1e-9) / 1e12}
        if self.cfg.run.peak_tflops:
            record["mfu"] = record["tflops"] / self.cfg.run.peak_tflops
        record.update({k: v.item() for k, v in out.items() if k != "loss"})
        if self.teachers:
            record["weights"] = {t.name: w for t, w in zip(self.teachers, weights)}
        self.logger.log(record, step=self.step)
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
        window.clear()

    def _finish(self) -> dict:
        weights = self.weighting.weights().detach().float().cpu().tolist()
        if not self.dist.main:
            return {"mode": self.mode, "steps": self.step}
        metrics = {"mode": self.mode, "steps": self.step, "videos": len(self.dataset),
                   "bad_items": [{"path": p, "reason": r} for p, r in self.bad.items],
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
