"""Teacher sources: where a teacher's frame encoder comes from. Each source registers one
:class:`TeacherSource` in :data:`~dtgnet.registry.TEACHER_SOURCES`: how it builds the encoder, which config
keys it needs (checked with the rest of the config, before any work), and what beyond its weights decides its
embeddings (the teacher cache's fingerprint).

Built in here: the bundled EfficientNet-Lite0, torchvision models by weight name (read from the torch hub
cache when there is no internet), TorchScript files, ONNX files (onnxruntime) and the image-based action
teacher; timm, open_clip and Hugging Face register themselves in :mod:`dtgnet.teachers.hub`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD
from ..registry import TEACHER_SOURCES
from .action import load_action_teacher
from .base import DEFAULT_INPUT, FrameEncoder, patch_grid
from .lite import LITE_DIM, LITE_MEAN, LITE_STD, efficientnet_lite0


def _no_check(key: str, cfg, check_paths: bool) -> None:
    pass


@dataclass(frozen=True)
class TeacherSource:
    name: str
    build: Callable[..., FrameEncoder]
    """``build(teacher_cfg, class_names)``: the frame encoder (class names fill prompts, where a source has them)."""
    check: Callable[[str, object, bool], None] = _no_check
    """``check("teachers.<i>", teacher_cfg, check_paths)``: raise :class:`ConfigError` on a source-specific key."""
    prompts: bool = False
    """Whether ``teachers.prompt`` applies (CLIP-family sources)."""
    hashed_file: bool = False
    """The weights file's bytes go into the cache fingerprint (encoders whose parameters torch cannot see)."""
    describes: tuple[str, ...] = ()
    """Config fields that choose the embedding without being in the weights; the cache fingerprint holds them."""
    video: bool = False
    """A video teacher (:mod:`dtgnet.teachers.video`): embeds whole clips; ``build(teacher_cfg)`` gives
    (clip encoder, input side, frames (0: any), mean, std, width)."""
    text: Callable[..., tuple] | None = None
    """CLIP family: ``text(teacher_cfg, texts)`` -> (``(C, D)`` text embeddings in the image embedding's space,
    logit scale), for zero-shot classification (``dtgnet predict --zero-shot``)."""


def register_source(source: TeacherSource) -> TeacherSource:
    return TEACHER_SOURCES.add(source.name, source)


def needs_file(key: str, cfg, check_paths: bool) -> None:
    """``teachers.weights`` names a file that exists."""
    if not cfg.weights:
        raise ConfigError(f"{key}.weights", f"source {cfg.source} needs a file path")
    if check_paths and not Path(cfg.weights).is_file():
        raise ConfigError(f"{key}.weights", f"file not found: {cfg.weights}")


# ------------------------------------------------------------------------------------------ torchvision

def _strip_last_linear(model: nn.Module) -> int:
    """Replace the last nn.Linear (the classifier) by Identity; returns its input width."""
    last_name, last = None, None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last_name, last = name, mod
    if last is None:
        raise ConfigError("teachers.weights", "the torchvision model has no linear classifier to remove")
    parent = model
    parts = last_name.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], nn.Identity())
    return last.in_features


def torchvision_model(weight_name: str, video: bool = False) -> tuple[nn.Module, object, str]:
    """A torchvision model (an image classifier; ``video``: a video classifier) with the weights named
    ``weight_name``: (model, its weights enum, the builder's name). The weights come from the torch hub cache
    ($TORCH_HOME/hub/checkpoints), downloaded there if allowed."""
    import torchvision.models as tvm
    import torchvision.models.video as tvv

    try:
        weights = tvm.get_weight(weight_name)
    except Exception:
        raise ConfigError("teachers.weights", f"unknown torchvision weight name {weight_name!r}") from None
    builder = next((n for n in tvm.list_models(module=tvv if video else tvm)
                    if tvm.get_model_weights(n) is type(weights)), None)
    if builder is None:
        kind = "a torchvision video model's weights" if video else "the weights of an image classification model"
        raise ConfigError("teachers.weights", f"{weight_name!r} is not {kind}")
    model = tvm.get_model(builder, weights=None)
    model.load_state_dict(torchvision_state(weights))
    return model, weights, builder


def torchvision_state(weights) -> dict:
    """The state dict of a torchvision weights enum, from the torch hub cache ($TORCH_HOME/hub/checkpoints),
    downloaded there if allowed; a clear error naming the file to place there otherwise."""
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load {weights} from the torch hub cache or the internet ({first_line(e)}); "
                              f"place the file from {weights.url} in $TORCH_HOME/hub/checkpoints/") from None


def torchvision_encoder(weight_name: str) -> tuple[nn.Module, tuple, tuple, int]:
    """A torchvision classifier by weight name (e.g. ``ResNet50_Weights.IMAGENET1K_V2``), classifier removed."""
    model, weights, _ = torchvision_model(weight_name)
    dim = _strip_last_linear(model)
    tf = weights.transforms()
    return model, tuple(tf.mean), tuple(tf.std), dim


def _check_torchvision(key: str, cfg, check_paths: bool) -> None:
    if "." not in cfg.weights:
        raise ConfigError(f"{key}.weights",
                          f"expected a weight name such as ResNet18_Weights.IMAGENET1K_V1, got {cfg.weights!r}")


def torchvision_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision classifier's token grid ``(N, C, h, w)``: the feature map its ``avgpool`` pools (ResNet,
    EfficientNet, MobileNet, ConvNeXt, RegNet, ...) or a ViT encoder's patch tokens."""
    pool, vit = getattr(model, "avgpool", None), getattr(model, "encoder", None)
    tap = pool if isinstance(pool, nn.Module) else vit if isinstance(vit, nn.Module) else None
    if tap is None:
        raise ConfigError("loss.token_weight", f"torchvision {type(model).__name__}: no avgpool or ViT encoder "
                                               f"to read a token grid from")
    seen = []
    hook = tap.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0] if m is pool else out))
    try:
        model(x)
    finally:
        hook.remove()
    return seen[0] if tap is pool else patch_grid(seen[0], 1, "torchvision ViT")


def _build_torchvision(cfg, class_names) -> FrameEncoder:
    model, mean, std, dim = torchvision_encoder(cfg.weights)
    # a plain attribute, not a wrapper module: the parameter names (the cache's fingerprint) stay the model's
    model.tokens = lambda x: torchvision_tokens(model, x)
    return FrameEncoder(model, DEFAULT_INPUT, mean, std, dim)


# ------------------------------------------------------------------------------------------ files

def _build_torchscript(cfg, class_names) -> FrameEncoder:
    try:
        encoder = torch.jit.load(cfg.weights, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{cfg.weights}: not a TorchScript file ({type(e).__name__})") from None
    return FrameEncoder(encoder.eval(), DEFAULT_INPUT, IMAGENET_MEAN, IMAGENET_STD, None)


class OnnxEncoder(nn.Module):
    """Runs an ONNX image model through onnxruntime (CPU); input normalised (N, 3, S, S), output (N, D)."""

    def __init__(self, path: str):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("teachers.source", "onnx teachers need onnxruntime (pip install 'dtgnet[onnx]')") from None
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x):
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device).flatten(1)


def _build_action(cfg, class_names) -> FrameEncoder:
    encoder, meta = load_action_teacher(cfg.weights)
    return FrameEncoder(encoder, int(meta["input_size"]), LITE_MEAN, LITE_STD, int(meta["hidden"]))


register_source(TeacherSource(
    "efficientnet_lite0", lambda cfg, _: FrameEncoder(efficientnet_lite0(), DEFAULT_INPUT, LITE_MEAN, LITE_STD, LITE_DIM)))
register_source(TeacherSource("torchvision", _build_torchvision, _check_torchvision))
register_source(TeacherSource("torchscript", _build_torchscript, needs_file))
register_source(TeacherSource(
    "onnx", lambda cfg, _: FrameEncoder(OnnxEncoder(cfg.weights), DEFAULT_INPUT, IMAGENET_MEAN, IMAGENET_STD, None),
    needs_file, hashed_file=True))
register_source(TeacherSource("action", _build_action, needs_file))
