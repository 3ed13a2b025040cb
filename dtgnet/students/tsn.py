"""TSN-ResNet-18, the paper's student, and its TSM variant; TSN over any 2D image network (``tsn`` with
``student.backbone``: a timm model or the bundled EfficientNet-Lite0)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..io import IMAGENET_MEAN, IMAGENET_STD, require_extra
from .image_init import image_state, load_matching, tsm_key
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

    def initialise_from(self, source: str) -> None:
        """``student.init_from``: a 2D ResNet-18 (torchvision weight name, timm name or local file)."""
        shifted = isinstance(self.net.layer1[0].conv1, TemporalShift)
        load_matching(self.net, image_state(source), source, rename=tsm_key if shifted else lambda k: k)


class TSN2D(nn.Module):
    """TSN over a 2D image network (average consensus of per-frame features): a timm model by name
    (``timm.create_model(name, num_classes=0)``, its input statistics from its pretrained config) or
    ``efficientnet_lite0``, the bundled teacher's network, whose ImageNet weights ``init_from: bundled`` loads."""

    temporal = "segments"

    def __init__(self, frames: int, backbone: str):
        super().__init__()
        self.frames, self.backbone_name = frames, backbone
        if backbone == "efficientnet_lite0":
            from efficientnet_lite_pytorch import EfficientNet

            from ..teachers.lite import LITE_DIM, LITE_MEAN, LITE_STD

            self.net = EfficientNet.from_name("efficientnet-lite0")
            self.net._fc = nn.Identity()  # the classifier: its weights stay out of the student
            self.feature_dim, mean, std = LITE_DIM, LITE_MEAN, LITE_STD
        else:
            timm = require_extra("timm", "timm")
            try:
                self.net = timm.create_model(backbone, pretrained=False, num_classes=0)
            except Exception as e:
                raise ConfigError("student.backbone", f"timm has no model {backbone!r} ({e})") from None
            cfg = self.net.pretrained_cfg
            self.feature_dim = self.net.num_features
            mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def feature_map(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> the last feature map ``(N, C, h, w)``."""
        if self.backbone_name == "efficientnet_lite0":
            return self.net.extract_features(f)
        out = self.net.forward_features(f)
        if out.dim() != 4:
            raise ConfigError("student.backbone", f"{self.backbone_name} gives tokens, not a feature map; TSN takes "
                                                  f"a convolutional timm network")
        return out

    def per_segment(self, x):
        """``(B, T, 3, H, W)`` -> ``(B, T, D)``: each segment's pooled feature."""
        b, t = x.shape[:2]
        f = (x.flatten(0, 1) - self.mean) / self.std  # (B*T, 3, H, W)
        return self.feature_map(f).mean((2, 3)).unflatten(0, (b, t))

    def forward(self, x):
        return self.per_segment(x).mean(1)  # (B, D)

    def tokens(self, x):
        """``(B, T * h * w, D)``: every segment's last feature map, one token per position."""
        b = x.shape[0]
        f = self.feature_map((x.flatten(0, 1) - self.mean) / self.std)  # (B*T, D, h, w)
        return f.flatten(2).transpose(1, 2).reshape(b, -1, f.shape[1])  # (B, T*h*w, D)

    def initialise_from(self, source: str) -> None:
        """``student.init_from``: ``bundled`` (EfficientNet-Lite0's ImageNet weights), a local file, or
        ``timm`` (the backbone's own pretrained weights from timm's hub)."""
        if source == "bundled":
            if self.backbone_name != "efficientnet_lite0":
                raise ConfigError("student.init_from", "bundled weights exist for student.backbone="
                                                       "efficientnet_lite0 only")
            from ..io import safe_torch_load
            from ..teachers.lite import bundled_lite0_path

            state, source = safe_torch_load(bundled_lite0_path()), "the bundled EfficientNet-Lite0"
        else:
            state = image_state(self.backbone_name if source == "timm" else source)
        load_matching(self.net, state, source, skip=("fc.", "classifier.", "head.", "_fc."))


def _check_tsn(cfg) -> None:
    if not cfg.student.backbone:
        raise ConfigError("student.backbone", "student.arch=tsn needs a 2D network: a timm model name or "
                                              "efficientnet_lite0")
    if cfg.student.temporal_shift:
        raise ConfigError("student.temporal_shift", "the temporal shift (TSM) wraps ResNet blocks: use "
                                                    "student.arch=tsn_r18, or temporal_shift=false with tsn")


register_student(StudentArch("tsn_r18", lambda frames, temporal_shift=False, **_: TSNResNet18(frames, temporal_shift),
                             per_segment=True, init_from=True))
register_student(StudentArch("tsn", lambda frames, backbone="", **_: TSN2D(frames, backbone), _check_tsn,
                             per_segment=True, init_from=True))
