"""TSN-ResNet-18, the paper's student, and its TSM variant."""
from __future__ import annotations

import torch
from torch import nn

from ..io import IMAGENET_MEAN, IMAGENET_STD
from .registry import StudentArch, register_student


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

    def tokens(self, x):
        """``(B, T * h * w, 512)``: every segment's last feature map, one token per position."""
        b, t = x.shape[:2]
        if t != self.frames:
            raise ValueError(f"student built for {self.frames} segments got {t}")
        n = self.net
        f = (x.flatten(0, 1) - self.mean) / self.std  # (B*T, 3, H, W)
        f = n.maxpool(n.relu(n.bn1(n.conv1(f))))
        f = n.layer4(n.layer3(n.layer2(n.layer1(f))))  # (B*T, 512, h, w)
        return f.flatten(2).transpose(1, 2).reshape(b, -1, f.shape[1])  # (B, T*h*w, 512)


register_student(StudentArch("tsn_r18", lambda frames, temporal_shift=False, **_: TSNResNet18(frames, temporal_shift),
                             per_segment=True))
