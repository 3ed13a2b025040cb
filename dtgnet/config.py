"""Run configuration: dataclasses with one docstring per field, YAML files and dotted overrides.

Every value is checked before any work starts. A mistake raises :class:`ConfigError` naming the dotted key;
the CLI turns it into one line on stderr and exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .dist import default_workers
from .errors import ConfigError, first_line
from .registry import STUDENTS, TEACHER_SOURCES, TEACHER_TERMS

DataFormat = Literal["list", "ucf101", "hmdb51", "kinetics", "folders", "frames"]
Backend = Literal["pyav", "decord", "torchcodec"]
Embedding = Literal["default", "projected", "pooled", "cls", "mean_patch"]
Precision = Literal["auto", "bf16", "fp32"]
LossForm = Literal["infonce", "margin"]
Weighting = Literal["fixed", "learned", "adaptive"]
Device = Literal["auto", "cpu", "cuda"]
MaskType = Literal["tube", "random"]
TokenForm = Literal["cosine", "l2"]
DATA_FORMATS, BACKENDS, EMBEDDINGS, PRECISIONS, LOSS_FORMS, WEIGHTINGS, DEVICES, MASK_TYPES, TOKEN_FORMS = (
    typing.get_args(t) for t in (DataFormat, Backend, Embedding, Precision, LossForm, Weighting, Device, MaskType,
                                 TokenForm))


@dataclass
class DataConfig:
    format: DataFormat = "list"
    """Dataset layout: list (`relative/path label` lines), ucf101, hmdb51, kinetics (csv), folders
    (`root/<class>/<video>`), frames (`root/<class>/<video>/<frame images>`)."""
    root: str = ""
    """Directory holding the videos; list entries are relative to it and may not leave it."""
    train_list: str = ""
    """Training list file (list/kinetics), split file (ucf101: trainlist0N.txt; hmdb51: split directory)."""
    val_list: str = ""
    """Validation list file; empty means no validation set."""
    test_list: str = ""
    """Test list file (ucf101: testlist0N.txt)."""
    classes: str = ""
    """Class-name file (one per line, or ucf101's classInd.txt); empty derives classes from the lists."""
    split: int = 1
    """Official split number for ucf101/hmdb51 (1, 2 or 3)."""
    frames: int = 4
    """Frames per sequence: TSN segments for 2D students, clip length for 3D students."""
    stride: int = 2
    """Frame stride inside a contiguous clip (3D students)."""
    size: int = 112
    """Side of the square crop fed to the student, in pixels."""
    eval_clips: int = 3
    """Clips per video at evaluation; video-level scores average their softmax."""
    label_fraction: float = 1.0
    """Fraction of labelled training videos used by finetune/joint (stratified, fixed by the seed)."""
    joint_unlabelled: bool = False
    """joint only: the DTG term also trains on the training videos left without a label by label_fraction
    (semi-supervised mode ii); cross-entropy sees only the labelled ones. Every batch then holds
    ``labelled_share`` labelled videos, and an epoch is one pass over the unlabelled ones."""
    labelled_share: float = 0.5
    """With joint_unlabelled: fraction of each batch drawn from the labelled videos."""
    backend: Backend = "pyav"
    """Video decoder: pyav (default), decord or torchcodec (optional extras)."""
    prepared: str = ""
    """Directory written by `dtgnet data prepare`: frames are read from its pre-decoded uint8 frame file
    instead of being decoded (much faster; see docs/PERFORMANCE.md)."""
    num_workers: int = -1
    """DataLoader worker processes: -1 (default) uses the cores this process may run on, at most 8; 0 loads
    in the main process."""
    max_bad_fraction: float = 0.05
    """The run stops cleanly once more than this fraction of loaded items was unreadable."""
    strong_aug: bool = True
    """Colour jitter and random grayscale in training views (consistent within each sequence)."""
    flip: bool = True
    """Random horizontal flip in training views. Turn off when classes differ by left/right or
    clockwise/counter-clockwise motion (a flip would swap them), as in SynthActions."""

    @property
    def workers(self) -> int:
        """``num_workers`` with -1 resolved."""
        if self.num_workers >= 0:
            return self.num_workers
        return min(8, default_workers())

    @property
    def reader(self) -> str:
        """The frame reader: frame folders have their own, videos use ``backend``."""
        return "frames" if self.format == "frames" else self.backend



    def check(self, cfg: Config) -> None:
        _choice("data.format", self.format, DATA_FORMATS)
        _choice("data.backend", self.backend, BACKENDS)
        _in_range("data.split", self.split, 1, 3)
        _at_least("data.frames", self.frames, 1)
        _at_least("data.stride", self.stride, 1)
        _at_least("data.size", self.size, 16)
        _at_least("data.eval_clips", self.eval_clips, 1)
        _in_range("data.label_fraction", self.label_fraction, 0.0, 1.0, low_open=True)
        _at_least("data.num_workers", self.num_workers, -1)
        if self.joint_unlabelled:
            batch = cfg.optim.batch_size
            labelled = labelled_per_batch(self, batch)
            if not 1 <= labelled < batch:
                raise ConfigError("data.labelled_share", f"{self.labelled_share} gives {labelled} labelled videos "
                                                         f"in a batch of {batch}; need 1 to {batch - 1}")
        _in_range("data.max_bad_fraction", self.max_bad_fraction, 0.0, 1.0)

@dataclass
class TeacherConfig:
    name: str = "imagenet"
    """Name used in logs, metrics and the report."""
    source: str = "efficientnet_lite0"
    """efficientnet_lite0 (bundled ImageNet weights), torchvision (model by weight name), torchscript file,
    onnx file, action (a file written by `dtgnet teacher train`), timm, open_clip or hf (Hugging Face
    transformers; timm, open_clip and hf are the extras dtgnet[timm], dtgnet[clip] and dtgnet[hf]); video
    teachers, which embed each view as a whole clip (online only): student (a dtgnet student file or
    folder), torchvision_video (a video model by weight name) or hf_video (a VideoMAE)."""
    weights: str = ""
    """torchvision: weight enum name such as ResNet18_Weights.IMAGENET1K_V1; torchscript, onnx, action: path to
    the file; timm: a local weights file (safetensors or a weights-only torch file), empty = timm's hub;
    open_clip: a pretrained tag (openai, laion2b_s34b_b88k) or a local checkpoint; student: a dtgnet student
    file or folder; torchvision_video: R3D_18_Weights.KINETICS400_V1, S3D_Weights.KINETICS400_V1, ..."""
    weight: float = 1.0
    """Initial (fixed: constant) weight w_k of this teacher's term in the DTG loss."""
    input_size: int = 0
    """Side of the square frame given to the teacher; 0 = the model's own (timm, open_clip, hf and action
    teachers read it from the model), 112 for the other sources."""
    model: str = ""
    """timm: model name (resnet50.a1_in1k); open_clip: model name (ViT-B-16) or a model-config JSON file;
    hf: model id (facebook/dinov2-small) or a local directory written by save_pretrained; hf_video: a VideoMAE
    id (MCG-NJU/videomae-base) or local directory."""
    embedding: Embedding = "default"
    """Which vector is the teacher's frame embedding: default (timm: pooled features; CLIP / SigLIP: the
    projected image embedding; other hf models: the CLS token), projected, pooled (hf: the vision tower's
    pooled output), cls or mean_patch (ViTs: the CLS token or the mean of the patch tokens)."""
    prompt: str = ""
    """CLIP family (open_clip, hf CLIP / SigLIP) only: a text template holding {} ('a video of a person {}.')
    turns the teacher into a zero-shot action teacher whose embedding is its class logits."""
    prompt_classes: list[str] = field(default_factory=list)
    """Class names for the prompts; empty = the dataset's class names (ApplyEyeMakeup -> apply eye makeup)."""
    trust_remote_code: bool = False
    """hf only: allow a model whose repository ships its own Python code to run it. Off: such a model is refused."""
    precision: Precision = "auto"
    """auto (bf16 on a GPU, fp32 on a CPU), bf16 or fp32: the autocast dtype of the teacher's forward pass."""
    compile: bool = False
    """Compile the teacher with torch.compile (pays on a GPU for long runs and caching; costs a warm-up)."""



    def check(self, key: str, check_paths: bool) -> None:
        """``key``: this teacher's place, ``teachers.<i>``; its source checks the keys it needs."""
        source = TEACHER_SOURCES.get(self.source, f"{key}.source")
        _at_least(f"{key}.weight", self.weight, 0.0)
        if self.input_size:
            _at_least(f"{key}.input_size", self.input_size, 32)
        _choice(f"{key}.embedding", self.embedding, EMBEDDINGS)
        _choice(f"{key}.precision", self.precision, PRECISIONS)
        if self.prompt and not source.prompts:
            raise ConfigError(f"{key}.prompt", "prompts need a CLIP-family teacher (source open_clip or hf)")
        if self.prompt and "{}" not in self.prompt:
            raise ConfigError(f"{key}.prompt", f"must hold {{}} where the class name goes, got {self.prompt!r}")
        if not self.name:
            raise ConfigError(f"{key}.name", "must not be empty")
        source.check(key, self, check_paths)

@dataclass
class StudentConfig:
    arch: str = "tsn_r18"
    """Student backbone: tsn_r18 (TSN with ResNet-18, the paper's), r3d_18, r2plus1d_18, s3d, mvit_v2_s,
    swin3d_t (torchvision), or vit_t / vit_s / vit_b (a video ViT with joint space-time attention)."""
    temporal_shift: bool = False
    """tsn_r18 only: insert temporal shift modules (TSM). Average consensus alone is blind to the order of
    frames; turn this on when classes differ by the direction of time (SynthActions does)."""
    freeze_bn: bool = False
    """BatchNorm layers normalise with their running statistics and never update them (TSN's partial BN).
    For tiny per-GPU batches, and for multi-process runs on CPU, where SyncBatchNorm is unavailable."""
    patch_size: int = 16
    """ViT students: side of a tubelet's square patch in pixels (data.size must be a multiple)."""
    tubelet: int = 2
    """ViT students: frames per tubelet (data.frames must be a multiple)."""
    init_from: str = ""
    """Start the backbone from an image model before training: tsn_r18 and r3d_18 (inflated) from a 2D
    ResNet-18 (a torchvision weight name such as ResNet18_Weights.IMAGENET1K_V1, a timm name or a local file);
    tsn from bundled (student.backbone=efficientnet_lite0: the teacher's ImageNet weights), timm (the
    backbone's pretrained weights) or a local file; ViTs from a timm image ViT of the same size (a name or a
    local file). R(2+1)D, S3D, MViT and Swin3D cannot (docs/TEACHERS.md says why)."""
    backbone: str = ""
    """student.arch=tsn only: the 2D network run on every segment, a timm model name (resnet50,
    convnext_tiny, ...) or efficientnet_lite0 (the bundled teacher's network)."""
    checkpointing: bool = False
    """ViT students: recompute each block's activations in the backward pass instead of keeping them
    (activation checkpointing): less memory, one more forward pass of the blocks (docs/TRAINING.md)."""
    mask_ratio: float = 0.0
    """ViT students, pre-training and joint views: share of the tubelets hidden from the encoder (0 to 0.9).
    The blocks run on the visible tokens only, so a step's cost falls with it; the clip features pool the
    visible tokens; fine-tuning and evaluation see every token (docs/TEACHERS.md, tokens)."""
    mask_type: MaskType = "tube"
    """tube (VideoMAE / UMT: the same patches hidden through time, so a hidden patch cannot be copied from
    the next tubelet) or random (every tubelet on its own)."""
    proj_dim: int = 128
    """Output dimension of every projection head."""
    proj_hidden: int = 512
    """Hidden width of the two-layer projection heads."""
    dropout: float = 0.3
    """Dropout before the classifier in finetune/joint."""



    def check(self, cfg: Config) -> None:
        arch = STUDENTS.get(self.arch, "student.arch")
        _at_least("student.patch_size", self.patch_size, 1)
        _at_least("student.tubelet", self.tubelet, 1)
        arch.check(cfg)
        if self.init_from and not arch.init_from:
            raise ConfigError("student.init_from", f"{self.arch} cannot start from an image model (tsn_r18, tsn, "
                                                   f"r3d_18 and the ViTs can)")
        if self.backbone and self.arch != "tsn":
            raise ConfigError("student.backbone", f"a 2D backbone is for student.arch=tsn, not {self.arch}")
        if self.checkpointing and not arch.checkpointing:
            raise ConfigError("student.checkpointing", f"activation checkpointing needs a ViT student, not {self.arch}")
        _in_range("student.mask_ratio", self.mask_ratio, 0.0, 0.9)
        _choice("student.mask_type", self.mask_type, MASK_TYPES)
        if self.mask_ratio and not arch.tokens:
            raise ConfigError("student.mask_ratio", f"masking needs a student made of tokens (vit_t, vit_s, vit_b), "
                                                    f"not {self.arch}")
        _at_least("student.proj_dim", self.proj_dim, 1)
        _at_least("student.proj_hidden", self.proj_hidden, 1)
        _in_range("student.dropout", self.dropout, 0.0, 1.0)

@dataclass
class LossConfig:
    form: LossForm = "infonce"
    """Teacher/self term form: infonce (default) or margin (Hadsell-style contrastive)."""
    tau: float = 0.1
    """InfoNCE temperature."""
    margin: float = 1.0
    """Margin m of the margin form (embeddings are unit vectors, so distances lie in [0, 2])."""
    self_weight: float = 1.0
    """Weight w_0 of the student self term; 0 disables it."""
    weighting: Weighting = "fixed"
    """Teacher weighting: fixed (teachers[*].weight), learned (uncertainty weighting) or adaptive (label-free,
    from how well each teacher separates the batch's videos)."""
    adaptive_momentum: float = 0.9
    """EMA momentum of the adaptive weights' signal."""
    adaptive_temperature: float = 0.5
    """Softmax temperature turning adaptive scores into weights (lower = sharper)."""
    joint_lambda: float = 1.0
    """lambda in joint mode: L = CE + lambda * L_DTG."""
    queue_size: int = 0
    """Past teacher embeddings kept per teacher as extra InfoNCE negatives (teachers are frozen, so the
    queue does not drift); 0 disables it."""
    regression_weight: float = 0.0
    """Weight of feature regression inside each teacher term: 1 - cos between the student's head-k embedding of
    a sequence and teacher k's embedding of the same sequence (as UMT / MVD distil CLIP); 0 disables it."""
    relational_weight: float = 0.0
    """Weight of relational distillation inside each teacher term: KL from the teacher's to the student's
    softmax over each video's similarities to the batch's other videos; 0 disables it."""
    relational_tau: float = 0.1
    """Temperature of the relational term's similarity softmax."""
    segment_weight: float = 0.0
    """Weight of per-segment alignment inside each teacher term: each of the student's segment features
    (through head k) against teacher k's embedding of that segment's frame, InfoNCE over the batch's videos at
    the same position, next to the sequence means; TSN students only; 0 disables it."""
    clip_weight: float = 1.0
    """Weight of the paper's clip-level cross-view contrast inside each teacher term; 0 (with
    loss.token_weight > 0) distils teacher tokens alone, as UMT does."""
    token_weight: float = 0.0
    """Weight of masked token distillation inside each teacher term (UMT): every visible student token,
    through a linear head per teacher, against the teacher's token at its place (the tubelet's first frame,
    the teacher's grid resampled to the student's). ViT students, image teachers, online (no teacher
    cache); 0 disables it."""
    token_form: TokenForm = "cosine"
    """cosine (1 - cos per token) or l2 (UMT's: mean squared error between the L2-normalised tokens, which
    is (2 - 2 cos) / C for teacher tokens of width C)."""
    reverse_weight: float = 0.0
    """Weight of the time-arrow self term: view b's self embedding against view a's, with view a played
    backwards as one more negative, so the student learns the direction of time without labels (one more
    forward pass per step); needs loss.self_weight > 0; 0 disables it."""



    @property
    def clip_heads(self) -> bool:
        """Whether a clip-level term reads the student's per-teacher clip heads (none are built otherwise)."""
        return bool(self.clip_weight or any(getattr(self, t.weight_key) for t in TEACHER_TERMS if not t.needs_tokens))

    def check(self, cfg: Config) -> None:
        _choice("loss.form", self.form, LOSS_FORMS)
        _in_range("loss.tau", self.tau, 0.0, 10.0, low_open=True)
        _in_range("loss.margin", self.margin, 0.0, 2.0, low_open=True)
        _at_least("loss.self_weight", self.self_weight, 0.0)
        _choice("loss.weighting", self.weighting, WEIGHTINGS)
        _in_range("loss.adaptive_momentum", self.adaptive_momentum, 0.0, 1.0)
        _in_range("loss.adaptive_temperature", self.adaptive_temperature, 0.0, 100.0, low_open=True)
        _at_least("loss.joint_lambda", self.joint_lambda, 0.0)
        _at_least("loss.queue_size", self.queue_size, 0)
        _in_range("loss.relational_tau", self.relational_tau, 0.0, 10.0, low_open=True)
        _at_least("loss.reverse_weight", self.reverse_weight, 0.0)
        _at_least("loss.clip_weight", self.clip_weight, 0.0)
        _choice("loss.token_form", self.token_form, TOKEN_FORMS)
        arch = STUDENTS.get(cfg.student.arch, "student.arch")
        if self.token_weight and not arch.tokens:
            raise ConfigError("loss.token_weight", f"token distillation needs a student made of tokens (vit_t, "
                                                   f"vit_s, vit_b), not {cfg.student.arch}")
        if cfg.run.token_cache_grid and not self.token_weight:
            raise ConfigError("run.token_cache_grid", "caches teacher tokens, which only loss.token_weight reads")
        if cfg.run.token_cache_grid and not (cfg.run.teacher_cache or cfg.run.teacher_cache_dir):
            raise ConfigError("run.token_cache_grid", "is part of the teacher cache: set run.teacher_cache=true "
                                                      "or run.teacher_cache_dir")
        if cfg.teachers and not self.clip_heads and not self.token_weight:
            raise ConfigError("loss.clip_weight", "0 with no other teacher term leaves the teachers nothing to "
                                                  "teach; set loss.token_weight or another term's weight")
        per_segment = arch.per_segment
        for term in TEACHER_TERMS:  # every registered term inside L_k: its weight, and what it needs
            key, weight = f"loss.{term.weight_key}", getattr(self, term.weight_key)
            _at_least(key, weight, 0.0)
            if weight > 0 and term.needs_segments and not per_segment:
                raise ConfigError(key, f"the {term.name} term needs a student with one feature per segment "
                                       f"(student.arch=tsn_r18), not {cfg.student.arch}")
        if self.reverse_weight > 0 and self.self_weight <= 0:
            raise ConfigError("loss.reverse_weight", "the time-arrow term is part of the self term: it needs "
                                                     "loss.self_weight > 0")

@dataclass
class OptimConfig:
    epochs: int = 10
    """Passes over the training list."""
    batch_size: int = 16
    """Videos per step (each gives two sequences in pretrain/joint)."""
    lr: float = 0.003
    """Peak learning rate (AdamW), reached after warm-up, then cosine decay to 1 % of it."""
    head_lr_scale: float = 1.0
    """Learning-rate multiplier of heads and classifier relative to the backbone."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    max_steps: int = 0
    """Stop after this many steps (0: run all epochs)."""
    micro_batch: int = 0
    """Videos per backbone pass (0: the whole batch at once). Smaller ones cut activation memory while every
    contrastive term still compares across the whole batch (GradCache: one more backbone pass without
    gradients; a ViT-S at batch 16 in micro-batches of 2 needed 3x less step memory and 1.5x the time on a
    CPU). Exact for backbones without batch norm; a CNN student needs student.freeze_bn=true to be
    (docs/TRAINING.md)."""

    def check(self) -> None:
        _at_least("optim.epochs", self.epochs, 1)
        _at_least("optim.batch_size", self.batch_size, 2)
        _in_range("optim.lr", self.lr, 0.0, 10.0, low_open=True)
        _at_least("optim.head_lr_scale", self.head_lr_scale, 0.0)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _at_least("optim.max_steps", self.max_steps, 0)
        _at_least("optim.micro_batch", self.micro_batch, 0)

@dataclass
class RunConfig:
    out: str = "runs/run"
    """Run directory for config.yaml, log.jsonl, TensorBoard events, metrics.json and checkpoints/."""
    seed: int = 0
    """Seed for sampling, augmentation and initialisation."""
    device: Device = "auto"
    """auto (cuda when available), cpu or cuda."""
    amp: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""
    teacher_cache: bool = False
    """Embed every frame of the training videos once per teacher and look the embeddings up during training
    instead of running the teachers on every view (much faster; teachers then see clean, un-augmented
    frames). The cache holds the image teachers' clip embeddings: video teachers and teacher tokens
    (``loss.token_weight``) are computed online beside it."""
    teacher_cache_dir: str = ""
    """Directory written by `dtgnet teacher cache -c CONFIG`: training memory-maps it instead of running the
    teachers (the image ones: see ``teacher_cache``), and refuses it when the teachers, their preprocessing or
    the videos changed."""
    token_cache_grid: int = 0
    """With a teacher cache and ``loss.token_weight``: the cache also holds each image teacher's token map of
    every frame, average-pooled to this many cells a side (float16: side² × C × 2 bytes per frame and
    teacher), and a view's teacher tokens are cut from it along the view's crop and flip; 0: teacher tokens
    are computed online, on the view itself (docs/TEACHERS.md, tokens)."""
    compile: bool = False
    """Wrap the student in torch.compile."""
    peak_tflops: float = 0.0
    """The accelerator's peak dense TFLOP/s in the training precision (e.g. 989 for an H100/H200 in bf16);
    when set, log.jsonl reports MFU = achieved / peak. Achieved TFLOP/s is always logged."""
    dist_timeout_s: float = 1800.0
    """Under torchrun: seconds a process waits for its peers (joining the job, or in a collective) before
    it fails, so that torchrun can restart the job instead of it hanging. Keep it well above the time rank 0
    takes to write a checkpoint: the other ranks wait that long in their next collective."""
    log_every: int = 10
    """Steps between log.jsonl / TensorBoard records."""
    keep_checkpoints: int = 2
    """Most recent step checkpoints kept beside last.pt."""
    checkpoint_every: int = 500
    """Steps between checkpoints; one is always written when the run ends or stops early."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""



    def check(self) -> None:
        _choice("run.device", self.device, DEVICES)
        _at_least("run.log_every", self.log_every, 1)
        _at_least("run.peak_tflops", self.peak_tflops, 0.0)
        _at_least("run.dist_timeout_s", self.dist_timeout_s, 1.0)
        _at_least("run.keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("run.threads", self.threads, 0)
        _at_least("run.checkpoint_every", self.checkpoint_every, 1)
        _in_range("run.token_cache_grid", self.token_cache_grid, 0, 32)
        if not self.out:
            raise ConfigError("run.out", "must not be empty")

@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset, sampling and augmentation."""
    teachers: list[TeacherConfig] = field(default_factory=lambda: [TeacherConfig()])
    """Frozen image teachers; an empty list gives plain two-view SSL."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Video student network and heads."""
    loss: LossConfig = field(default_factory=LossConfig)
    """DTG loss and teacher weighting."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, seed, device."""


# --------------------------------------------------------------------------------------- building and checks

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value):
    """Convert a YAML value to the field type, or raise ConfigError naming the key."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return build_section(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        _choice(key, value, typing.get_args(tp))
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_coerce(f"{key}.{i}", item_tp, v) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")


def build_section(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(full, f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in values.items():
        full = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _coerce(full, hints[k], v)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def same_config(previous: dict | None, current: dict) -> bool:
    """Whether a run saved with config ``previous`` is the run ``current`` describes: equal once the keys a
    later version added take their defaults in ``previous`` (new options default to the old behaviour, so
    a run started before an upgrade resumes after it)."""
    if previous is None:
        return False
    try:
        filled = to_dict(build_section(Config, previous))
    except (ConfigError, TypeError):  # a key this version no longer has
        return False
    return json.dumps(filled, sort_keys=True, default=str) == json.dumps(current, sort_keys=True, default=str)


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(here, f"no list item {part} (the list has {len(node)})")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise ConfigError(here, "unknown key")
            node = node[part]
        else:
            raise ConfigError(here, "is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(key, f"no list item {last} (the list has {len(node)})")
        node[int(last)] = value
    elif isinstance(node, dict):
        if last not in node:
            raise ConfigError(key, "unknown key")
        node[last] = value
    else:
        raise ConfigError(key, "is a value, not a section")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(text, "override must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Config | None = None, check_paths: bool = True) -> Config:
    """Defaults (or ``base``) <- YAML file <- ``key=value`` overrides, then :func:`validate`."""
    tree = to_dict(base if base is not None else Config())
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", f"file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError("config", f"{p} is not valid YAML: {first_line(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("config", f"{p} must hold a mapping at the top level")
        _merge(tree, loaded, "")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = build_section(Config, tree)
    validate(cfg, check_paths=check_paths)
    return cfg


def _merge(tree: dict, loaded: dict, prefix: str) -> None:
    for k, v in loaded.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in tree:
            raise ConfigError(full, f"unknown key (known: {', '.join(sorted(tree))})")
        if isinstance(tree[k], dict) and isinstance(v, dict):
            _merge(tree[k], v, full)
        elif k == "teachers" and isinstance(v, list):
            default = to_dict(TeacherConfig())
            items = []
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    raise ConfigError(f"{full}.{i}", f"expected a mapping, got {item!r}")
                merged = dict(default)
                _merge(merged, item, f"{full}.{i}")
                items.append(merged)
            tree[k] = items
        else:
            tree[k] = v


def labelled_per_batch(d: DataConfig, batch_size: int) -> int:
    """Labelled videos in each joint batch when ``data.joint_unlabelled`` is on."""
    return int(round(d.labelled_share * batch_size))


def _choice(key, value, options):
    if value not in options:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(options)}")


def _at_least(key, value, low):
    if value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")


def _in_range(key, value, low, high, low_open=False):
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(key, f"must be in {bracket}{low}, {high}], got {value}")


def _check_video_teacher(cfg: Config, i: int) -> None:
    """A video teacher embeds each view whole: nothing per frame to cache (it runs online beside a cache of
    the image teachers) or to align segments with."""
    source = cfg.teachers[i].source
    if cfg.loss.segment_weight:
        raise ConfigError("loss.segment_weight", f"teachers.{i} ({source}) embeds whole clips, not one frame "
                                                 f"per segment")
    if cfg.loss.token_weight:
        raise ConfigError("loss.token_weight", f"teachers.{i} ({source}) embeds whole clips: it has no tokens "
                                               f"per frame to distil")


def validate(cfg: Config, check_paths: bool = True) -> None:
    """Range, choice and path checks, section by section; raises ConfigError naming the first bad key."""
    cfg.data.check(cfg)
    names: set[str] = set()
    for i, t in enumerate(cfg.teachers):
        t.check(f"teachers.{i}", check_paths)
        if t.name in names:
            raise ConfigError(f"teachers.{i}.name", f"duplicate teacher name {t.name!r}")
        names.add(t.name)
        if TEACHER_SOURCES.get(t.source, f"teachers.{i}.source").video:
            _check_video_teacher(cfg, i)
    cfg.student.check(cfg)
    cfg.loss.check(cfg)
    cfg.optim.check()
    cfg.run.check()
    if check_paths:
        validate_data_paths(cfg.data)


def validate_data_paths(d: DataConfig) -> None:
    """The format and back-end are known, the data root and every named list exist."""
    _choice("data.format", d.format, DATA_FORMATS)
    _choice("data.backend", d.backend, BACKENDS)
    if not d.root:
        raise ConfigError("data.root", "must be set (directory holding the videos)")
    if not Path(d.root).is_dir():
        raise ConfigError("data.root", f"directory not found: {d.root}")
    for key in ("train_list", "val_list", "test_list", "classes", "prepared"):
        value = getattr(d, key)
        if value and not Path(value).exists():
            raise ConfigError(f"data.{key}", f"file not found: {value}")


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls=Config) -> dict[str, str]:
    """Dotted key -> docstring, read from the source (for `dtgnet config --help` and the docs)."""
    import ast
    import inspect

    out: dict[str, str] = {}

    def walk(c, prefix):
        tree = ast.parse(inspect.getsource(c))
        body = tree.body[0].body
        hints = typing.get_type_hints(c)
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = node.target.id
                doc = ""
                if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(
                        getattr(body[i + 1], "value", None), ast.Constant):
                    doc = " ".join(str(body[i + 1].value.value).split())
                key = f"{prefix}{name}"
                tp = hints[name]
                if dataclasses.is_dataclass(tp):
                    walk(tp, key + ".")
                elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                    out[key] = doc
                    walk(typing.get_args(tp)[0], key + ".N.")
                else:
                    out[key] = doc

    walk(cls, "")
    return out
