"""Students that start from an image model (``student.init_from``).

* TSN / TSM-ResNet-18 (``tsn_r18``) loads a 2D ResNet-18: a torchvision weight name
  (``ResNet18_Weights.IMAGENET1K_V1``, read from the torch hub cache), a timm name (``resnet18.a1_in1k``) or a
  local file; torchvision's and timm's ResNets share their key names. TSM's shift wraps each block's first
  convolution without changing its weight.
* R3D-18 inflates the same 2D ResNet-18 (I3D, Carreira & Zisserman 2017): each k x k kernel is repeated over
  the t frames of the 3D kernel and divided by t, so a video of identical frames gives the image features.
* TSN over any 2D network (``tsn`` with ``student.backbone``): timm's pretrained weights for the name (or a
  local file), or, for ``efficientnet_lite0``, ``init_from: bundled``: the teacher's own ImageNet weights.
* ViTs inflate a timm image ViT (:mod:`dtgnet.students.vit`).

Not initialisable, and why: R(2+1)D-18 factorises each 3x3x3 convolution into a spatial and a temporal one
through a wider middle (its width is chosen to match R3D's parameter count), so no 2D kernel maps onto it;
S3D's 2D counterpart (BN-Inception) and MViT-v2 / Swin3D's (their image versions' attention and patch
merging differ from the video blocks) are not in torchvision.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, first_line
from ..io import read_state_dict, require_extra


def image_state(source: str, key: str = "student.init_from") -> dict:
    """A 2D network's state dict from a local file, a torchvision weight name (``..._Weights.NAME``) or a timm
    model name (its pretrained weights): every ``student.init_from`` source, ViTs' included."""
    if Path(source).suffix in (".safetensors", ".pt", ".pth", ".bin") or Path(source).exists():
        return read_state_dict(Path(source), key)
    if "_Weights." in source:
        import torchvision.models as tvm

        from ..teachers.sources import torchvision_state

        try:
            weights = tvm.get_weight(source)
        except Exception:
            raise ConfigError(key, f"unknown torchvision weight name {source!r}") from None
        return torchvision_state(weights)
    timm = require_extra("timm", "timm")
    try:
        return timm.create_model(source, pretrained=True).state_dict()
    except Exception as e:
        raise CheckpointError(f"timm {source}: cannot load its weights ({first_line(e)})") from None


def load_matching(module: torch.nn.Module, state: dict, source: str, rename=lambda k: k, inflate: bool = False,
                  skip: tuple[str, ...] = ("fc.", "classifier.", "head.")) -> None:
    """Load ``state`` (renamed key by key) into ``module``; every weight of ``module`` must be found (a
    classifier in ``state`` is skipped). ``inflate``: 4-D kernels become 5-D ones, repeated over the 3D
    kernel's time extent and divided by it."""
    own = module.state_dict()
    new, unknown = {}, []
    for k, v in state.items():
        if k.startswith(skip):
            continue
        target = rename(k)
        if target not in own:
            unknown.append(k)
            continue
        if inflate and v.dim() == 4 and own[target].dim() == 5:
            t = own[target].shape[2]
            v = v[:, :, None].repeat(1, 1, t, 1, 1) / t  # (O, I, t, k, k): same response to a still video
        if v.shape != own[target].shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the student's {target} "
                                  f"{tuple(own[target].shape)}; is it the same network?")
        new[target] = v
    missing = [k for k in own if k not in new and not k.endswith("num_batches_tracked")]
    if missing or unknown:
        first = f"the student's {missing[0]} is not in it" if missing else f"{unknown[0]} has no place in the student"
        raise CheckpointError(f"{source}: not the student's 2D network ({len(missing)} weights missing, "
                              f"{len(unknown)} unknown; {first})")
    module.load_state_dict(new, strict=False)


def tsm_key(k: str) -> str:
    """A 2D ResNet key in a TSM-ResNet: each block's first convolution sits inside its shift."""
    parts = k.split(".")
    if len(parts) == 4 and parts[0].startswith("layer") and parts[2] == "conv1":
        return ".".join(parts[:3] + ["conv", parts[3]])
    return k


def r3d_key(k: str) -> str:
    """A 2D ResNet-18 key in torchvision's R3D-18 (``stem``; ``convN.0`` / ``convN.1`` for conv / BN)."""
    parts = k.split(".")
    if parts[0] == "conv1":
        return "stem.0." + parts[-1]
    if parts[0] == "bn1":
        return "stem.1." + parts[-1]
    if len(parts) == 4 and parts[0].startswith("layer") and parts[2] in ("conv1", "conv2", "bn1", "bn2"):
        conv = "conv" + parts[2][-1]
        return ".".join(parts[:2] + [conv, "0" if parts[2].startswith("conv") else "1", parts[3]])
    return k
