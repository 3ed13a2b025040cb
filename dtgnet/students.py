"""Video students: a backbone (video -> feature), a projection head per teacher plus one for the self term,
and an optional classifier. Backbones: TSN-ResNet-18 (optionally with temporal shift), torchvision's R3D-18,
R(2+1)D-18, S3D, MViT-v2-S and Swin3D-T, and a ViT with joint space-time attention (:mod:`dtgnet.video_vit`). Inputs are ``(B, T, 3, H, W)`` in [0, 1]; each backbone normalises itself.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, first_line
from .video_vit import VIT_SIZES, VideoViT, image_vit_state

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MVIT_MEAN, MVIT_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # torchvision's MViT / Swin3D Kinetics weights


class TemporalShift(nn.Module):
    """TSM (Lin et al., 2019): shift 1/8 of the channels one segment forward and 1/8 backward in time before
    the wrapped conv, making a 2D network order-aware at no parameter cost."""

    def __init__(self, conv: nn.Module, segments: int, fold_div: int = 8):
        super().__init__()
        self.conv, self.segments, self.fold_div = conv, segments, fold_div

    def forward(self, x):
        nt, c, h, w = x.shape
        x = x.view(nt // self.segments, self.segments, c, h, w)  # (B, T, C, H, W)
        fold = c // self.fold_div
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]  # future -> now
        out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # past -> now
        out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
        return self.conv(out.view(nt, c, h, w))


class TSNResNet18(nn.Module):
    """TSN with a ResNet-18 per frame and average consensus (the paper's student). With ``temporal_shift`` it
    becomes TSM-ResNet-18; plain average consensus cannot tell a video from its time reversal."""

    feature_dim = 512
    temporal = "segments"

    def __init__(self, frames: int, temporal_shift: bool = False):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Identity()
        if temporal_shift:
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in layer:
                    block.conv1 = TemporalShift(block.conv1, frames)
        self.net = net
        self.frames = frames
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def per_segment(self, x):
        """``(B, T, 3, H, W)`` -> ``(B, T, 512)``: each segment's feature before the average consensus."""
        b, t = x.shape[:2]
        if t != self.frames:
            raise ValueError(f"student built for {self.frames} segments got {t}")
        f = (x.flatten(0, 1) - self.mean) / self.std  # (B*T, 3, H, W)
        return self.net(f).unflatten(0, (b, t))

    def forward(self, x):
        return self.per_segment(x).mean(1)  # (B, 512)


class Video3D(nn.Module):
    """torchvision video networks (r3d_18, r2plus1d_18, s3d, mvit_v2_s, swin3d_t) with the classifier
    removed. S3D's fixed 7x7 pooling is made adaptive so it runs at 112x112; MViT-v2 is built for the run's
    clip length and crop size (its blocks are tied to them)."""

    temporal = "clip"
    HEADS = {"r3d_18": ("fc", 512), "r2plus1d_18": ("fc", 512), "s3d": ("classifier", 1024),
             "mvit_v2_s": ("head", 768), "swin3d_t": ("head", 768)}

    def __init__(self, arch: str, frames: int = 16, size: int = 112):
        super().__init__()
        import torchvision.models.video as tvv

        net = _mvit_v2_s(frames, size) if arch == "mvit_v2_s" else getattr(tvv, arch)(weights=None)
        if arch == "s3d":
            net.avgpool = nn.AdaptiveAvgPool3d(1)
        head, self.feature_dim = self.HEADS[arch]
        setattr(net, head, nn.Identity())
        self.net = net
        mean, std = (KINETICS_MEAN, KINETICS_STD) if arch in ("r3d_18", "r2plus1d_18", "s3d") else (MVIT_MEAN, MVIT_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, x):
        v = (x.transpose(1, 2) - self.mean) / self.std  # (B, 3, T, H, W)
        if v.is_cuda:  # cuDNN's fastest 3D convolutions want channels-last input
            v = v.contiguous(memory_format=torch.channels_last_3d)
        return self.net(v).flatten(1)  # (B, feature_dim)


def _mvit_v2_s(frames: int, size: int) -> nn.Module:
    """torchvision's ``mvit_v2_s`` fixes 16x224x224 when it calls its builder ``_mvit``; this calls it with the
    run's sizes instead (same blocks, position tables sized for the input)."""
    from torchvision.models.video import mvit

    if frames % 2 or size % 32:
        from .errors import ConfigError

        raise ConfigError("student.arch", f"mvit_v2_s needs an even clip length and a crop side divisible by 32, "
                                          f"got data.frames={frames}, data.size={size}")
    build = mvit._mvit

    def sized(**kwargs):
        return build(**{**kwargs, "spatial_size": (size, size), "temporal_size": frames})

    mvit._mvit = sized
    try:
        return mvit.mvit_v2_s(weights=None)
    finally:
        mvit._mvit = build


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class DTGStudent(nn.Module):
    """Backbone f, self head h_0, one head h_k per teacher (its output lives in teacher k's embedding space,
    so its width is the teacher's), optional classifier."""

    def __init__(self, arch: str, frames: int, teacher_dims: dict[str, int], proj_dim: int = 128,
                 proj_hidden: int = 512, num_classes: int = 0, dropout: float = 0.0,
                 temporal_shift: bool = False, self_head: bool = True, freeze_bn: bool = False,
                 size: int = 112, patch_size: int = 16, tubelet: int = 2):
        super().__init__()
        self.arch, self.frames, self.freeze_bn = arch, frames, freeze_bn
        if arch == "tsn_r18":
            self.backbone = TSNResNet18(frames, temporal_shift)
        elif arch in VIT_SIZES:
            self.backbone = VideoViT(arch, frames, size, patch_size, tubelet)
        else:
            self.backbone = Video3D(arch, frames, size)
        d = self.backbone.feature_dim
        self.self_head = projection_head(d, proj_hidden, proj_dim) if self_head else None
        self.teacher_heads = nn.ModuleDict({n: projection_head(d, proj_hidden, dim) for n, dim in teacher_dims.items()})
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, num_classes)) if num_classes else None

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:  # normalise with running statistics, never update them
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def temporal(self) -> str:
        return self.backbone.temporal

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.backbone(x)

    def set_classifier(self, num_classes: int, dropout: float = 0.0) -> None:
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.feature_dim, num_classes))


def build_student(cfg, teacher_dims: dict[str, int], num_classes: int = 0, self_head: bool = True) -> DTGStudent:
    s = cfg.student
    return DTGStudent(s.arch, cfg.data.frames, teacher_dims, s.proj_dim, s.proj_hidden, num_classes, s.dropout,
                      s.temporal_shift, self_head, s.freeze_bn, cfg.data.size, s.patch_size, s.tubelet)


def initialise_backbone(model: DTGStudent, cfg) -> None:
    """``student.init_from``: inflate a timm image ViT's weights into a ViT student (before training only)."""
    source = cfg.student.init_from
    if not source:
        return
    if not isinstance(model.backbone, VideoViT):
        from .errors import ConfigError

        raise ConfigError("student.init_from", f"inflation needs a ViT student, not {cfg.student.arch}")
    model.backbone.inflate_from(image_vit_state(source), source)


def save_student_safetensors(model: DTGStudent, path, meta: dict) -> None:
    """Export the student's weights as safetensors (no code runs on load), written atomically."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"dtgnet": json.dumps(meta)})
    tmp.replace(path)


def _read_student_file(path) -> tuple[dict, dict]:
    """(metadata, state dict) of a run checkpoint or an exported safetensors student."""
    import json

    from .checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("dtgnet", "{}"))
            state = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__})") from None
    else:
        ckpt = load_checkpoint(path)  # its checksum too, where it has one
        if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
            raise CheckpointError(f"{path}: not a dtgnet checkpoint")
        meta, state = ckpt["meta"], ckpt["model"]
    if "config" not in meta:
        raise CheckpointError(f"{path}: no dtgnet metadata")
    return meta, state


def checkpoint_config(path):
    """The :class:`~dtgnet.config.Config` a checkpoint was trained with."""
    from .config import Config, _build

    return _build(Config, _read_student_file(path)[0]["config"])


def load_student(path, device: str = "cpu") -> DTGStudent:
    """A trained student from a run checkpoint (``.pt``) or an exported ``student.safetensors``."""
    from .config import Config, _build

    meta, state = _read_student_file(path)
    cfg = _build(Config, meta["config"])
    model = build_student(cfg, meta.get("teacher_heads", {}), meta.get("num_classes", 0),
                          self_head=meta.get("self_head", True))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model ({first_line(e)})") from None
    return model.to(device).eval()
