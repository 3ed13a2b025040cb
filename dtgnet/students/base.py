"""The DTG student: a backbone f (any registered architecture), a projection head h_0 for the self term, one
head h_k per teacher (its output lives in teacher k's embedding space, so its width is the teacher's), for
token distillation a linear token head g_k per teacher (into teacher k's token space), and an optional
classifier."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import STUDENTS


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class DTGStudent(nn.Module):
    """Backbone f, self head h_0, one head h_k per teacher (its output lives in teacher k's embedding space,
    so its width is the teacher's), optional classifier."""

    def __init__(self, arch: str, frames: int, teacher_dims: dict[str, int], proj_dim: int = 128,
                 proj_hidden: int = 512, num_classes: int = 0, dropout: float = 0.0,
                 temporal_shift: bool = False, self_head: bool = True, freeze_bn: bool = False,
                 size: int = 112, patch_size: int = 16, tubelet: int = 2, backbone: str = "",
                 token_dims: dict[str, int] | None = None):
        super().__init__()
        self.arch, self.frames, self.freeze_bn = arch, frames, freeze_bn
        self.backbone = STUDENTS.get(arch, "student.arch").build(
            frames=frames, size=size, temporal_shift=temporal_shift, patch_size=patch_size, tubelet=tubelet,
            backbone=backbone)
        d = self.backbone.feature_dim
        self.self_head = projection_head(d, proj_hidden, proj_dim) if self_head else None
        self.teacher_heads = nn.ModuleDict({n: projection_head(d, proj_hidden, dim) for n, dim in teacher_dims.items()})
        # UMT's light head: one linear map per teacher, token by token
        self.token_heads = nn.ModuleDict({n: nn.Linear(d, c) for n, c in token_dims.items()}) if token_dims else None
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


def build_student(cfg, teacher_dims: dict[str, int], num_classes: int = 0, self_head: bool = True,
                  token_dims: dict[str, int] | None = None) -> DTGStudent:
    s = cfg.student
    model = DTGStudent(s.arch, cfg.data.frames, teacher_dims, s.proj_dim, s.proj_hidden, num_classes, s.dropout,
                       s.temporal_shift, self_head, s.freeze_bn, cfg.data.size, s.patch_size, s.tubelet,
                       s.backbone, token_dims)
    if s.checkpointing:
        model.backbone.checkpointing = True
    return model


def initialise_backbone(model: DTGStudent, cfg) -> None:
    """``student.init_from``: start the backbone from an image model (before training only;
    :mod:`dtgnet.students.image_init`)."""
    source = cfg.student.init_from
    if not source:
        return
    if not STUDENTS.get(cfg.student.arch, "student.arch").init_from:
        raise ConfigError("student.init_from", f"{cfg.student.arch} cannot start from an image model")
    model.backbone.initialise_from(source)


