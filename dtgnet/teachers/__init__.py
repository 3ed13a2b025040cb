"""Frozen teachers. Sources: the bundled EfficientNet-Lite0 ImageNet weights (offline), torchvision models by
weight name, TorchScript and ONNX files, image-based action teachers written by :func:`train_action_teacher`,
timm, open_clip and Hugging Face models; video teachers (dtgnet students, torchvision video models, VideoMAE);
any callable through :func:`callable_teacher`.

``base`` (the Teacher), ``sources`` (the source registry and the built-in sources), ``hub`` (timm /
open_clip / Hugging Face), ``action`` (the image action teacher and its training), ``lite`` (the bundled
ImageNet network), ``video`` (clip-level video teachers), ``cache`` (per-frame embeddings on disk).
"""
from . import hub, sources, video  # noqa: F401  (registers every source)
from .action import load_action_teacher, train_action_teacher
from .base import Teacher, build_teacher, callable_teacher
from .lite import efficientnet_lite0

__all__ = ["Teacher", "build_teacher", "callable_teacher", "efficientnet_lite0", "load_action_teacher",
           "train_action_teacher"]
