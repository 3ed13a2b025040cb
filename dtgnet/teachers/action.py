"""The image-based action teacher: the bundled ImageNet trunk plus an MLP head trained on still action
images in class folders (Stanford40 / BU101 layout) by ``dtgnet teacher train``."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, DataError
from ..io import save_safetensors_atomic
from .lite import LITE_DIM, LITE_MEAN, LITE_STD, LiteEncoder, efficientnet_lite0

ACTION_TEACHER_FORMAT = "dtgnet-action-teacher/1"


class ActionEncoder(nn.Module):
    """ImageNet trunk + an MLP head trained on still action images. Its embedding is the head's hidden layer;
    ``classify`` gives the action logits."""

    def __init__(self, trunk: nn.Module, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.trunk = trunk
        self.hidden = nn.Sequential(nn.Linear(LITE_DIM, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.hidden(self.trunk(x))

    def tokens(self, x):
        """The trunk's last feature map (its blocks fine-tuned on the stills where ``finetune_blocks`` > 0)."""
        return self.trunk.tokens(x)

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

    enc = ActionEncoder(LiteEncoder(EfficientNet.from_name("efficientnet-lite0")), len(classes), int(meta["hidden"]))
    enc.load_state_dict(state)
    enc.eval()
    meta["classes"] = classes
    return enc, meta


def _image_folder(images_dir: Path) -> tuple[list[Path], list[int], list[str]]:
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
    save_safetensors_atomic(enc.state_dict(), out, meta)
    return {"images": len(paths), "classes": len(classes), "train_acc": train_acc, "val_acc": val_acc,
            "path": str(out)}
