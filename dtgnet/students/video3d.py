"""torchvision's video networks as students: R3D-18, R(2+1)D-18, S3D, MViT-v2-S and Swin3D-T."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .image_init import image_state, load_matching, r3d_key
from .registry import StudentArch, register_student

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
MVIT_MEAN, MVIT_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # torchvision's MViT / Swin3D Kinetics weights


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
        self.arch = arch
        setattr(net, head, nn.Identity())
        self.net = net
        mean, std = (KINETICS_MEAN, KINETICS_STD) if arch in ("r3d_18", "r2plus1d_18", "s3d") else (MVIT_MEAN, MVIT_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

    TOKENS = {"r3d_18": "avgpool", "r2plus1d_18": "avgpool", "s3d": "avgpool", "swin3d_t": "avgpool",
              "mvit_v2_s": "norm"}
    """The module whose input (a ``(B, C, t, h, w)`` map) or output (MViT: class token + tokens) holds the last
    tokens before pooling."""

    def forward(self, x):
        v = (x.transpose(1, 2) - self.mean) / self.std  # (B, 3, T, H, W)
        if v.is_cuda:  # cuDNN's fastest 3D convolutions want channels-last input
            v = v.contiguous(memory_format=torch.channels_last_3d)
        return self.net(v).flatten(1)  # (B, feature_dim)

    def initialise_from(self, source: str) -> None:
        """``student.init_from`` (R3D-18 only): a 2D ResNet-18 inflated (I3D; :mod:`dtgnet.students.image_init`)."""
        if self.arch != "r3d_18":
            raise ConfigError("student.init_from", f"{self.arch} cannot start from an image model "
                                                   f"(dtgnet.students.image_init says why)")
        load_matching(self.net, image_state(source), source, rename=r3d_key, inflate=True)

    def tokens(self, x):
        """``(B, N, feature_dim)``: the last feature map's positions (MViT: its tokens without the class token)."""
        seen = {}
        where = getattr(self.net, self.TOKENS[self.arch])

        def keep(_module, args, out):
            seen["x"] = out[:, 1:] if self.arch == "mvit_v2_s" else args[0].flatten(2).transpose(1, 2)

        hook = where.register_forward_hook(keep)
        try:
            self.forward(x)
        finally:
            hook.remove()
        return seen["x"]


def _mvit_v2_s(frames: int, size: int) -> nn.Module:
    """torchvision's ``mvit_v2_s`` fixes 16x224x224 when it calls its builder ``_mvit``; this calls it with the
    run's sizes instead (same blocks, position tables sized for the input)."""
    from torchvision.models.video import mvit

    if frames % 2 or size % 32:
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


for _arch in Video3D.HEADS:
    register_student(StudentArch(_arch, lambda frames, size, _arch=_arch, **_: Video3D(_arch, frames, size),
                                 init_from=_arch == "r3d_18"))
