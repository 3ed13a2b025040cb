"""A ViT video student: tubelet embedding and joint space-time attention (ViViT's model 1, VideoMAE's backbone).

Attention runs through ``F.scaled_dot_product_attention``, so a GPU picks its flash or memory-efficient
kernel. Parameter names follow timm's image ViT (``patch_embed.proj``, ``blocks.N.attn.qkv``, ...), so the
spatial weights of a timm ViT can be inflated into the video model: the 2D patch kernel is repeated over the
tubelet's frames and divided by their number (a static video gives the image's features), the spatial
position table is resampled to the frame grid, and the temporal table starts at zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError, ConfigError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD
from .image_init import image_state
from .registry import StudentArch, register_student

VIT_SIZES = {"vit_t": (192, 12, 3), "vit_s": (384, 12, 6), "vit_b": (768, 12, 12)}  # width, depth, heads
"""ViT-Ti/S/B (DeiT, ViT): the names timm uses for vit_tiny/small/base_patch16_224."""


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, h, N, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TubeletEmbed(nn.Module):
    """``(B, 3, T, H, W)`` -> ``(B, T/t * H/p * W/p, D)``: one token per t x p x p tubelet."""

    def __init__(self, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VideoViT(nn.Module):
    """Video ViT with factorised position tables (space + time) and a mean-pooled, normalised output."""

    temporal = "segments"  # sparse TSN-style sampling over the whole video, as UMT and VideoMAE on SSv2

    def __init__(self, arch: str, frames: int, size: int, patch: int = 16, tubelet: int = 2):
        super().__init__()
        if arch not in VIT_SIZES:
            raise ConfigError("student.arch", f"unknown ViT size {arch!r} (known: {', '.join(VIT_SIZES)})")
        if frames % tubelet or size % patch:
            raise ConfigError("student.tubelet", f"{frames} frames of {size}x{size} do not split into "
                                                 f"{tubelet}x{patch}x{patch} tubelets (data.frames, data.size, "
                                                 f"student.patch_size)")
        dim, depth, heads = VIT_SIZES[arch]
        self.feature_dim, self.patch, self.tubelet = dim, patch, tubelet
        self.checkpointing = False  # student.checkpointing: blocks recompute their activations in backward
        self.grid = (frames // tubelet, size // patch, size // patch)
        self.patch_embed = TubeletEmbed(dim, patch, tubelet)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], dim))  # spatial
        self.time_embed = nn.Parameter(torch.zeros(1, self.grid[0], dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        self.apply(_init_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)

    def _embed(self, x):
        """``(B, T, 3, H, W)`` -> ``(B, N, D)``: every tubelet's embedding plus its position."""
        v = (x.transpose(1, 2) - self.mean) / self.std  # (B, 3, T, H, W)
        tokens = self.patch_embed(v)  # (B, T' * H' * W', D)
        pos = (self.time_embed[:, :, None] + self.pos_embed[:, None]).flatten(1, 2)  # (1, T' * H' * W', D)
        if tokens.shape[1] != pos.shape[1]:
            raise ValueError(f"student built for {self.grid[0]}x{self.grid[1] * self.grid[2]} tokens got input "
                             f"of shape {tuple(x.shape)}")
        return tokens + pos

    def _blocks(self, x):
        recompute = self.checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x  # (B, N, D)

    def _encode(self, x, visible=None):
        """The blocks' output tokens ``(B, N, D)``; with ``visible`` ``(B, M)`` token indices, of those ``M``
        tokens only: the masked ones never enter the blocks, so their cost falls with the mask ratio."""
        tokens = self._embed(x)  # (B, N, D)
        if visible is not None:
            tokens = tokens.gather(1, visible[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, M, D)
        return self._blocks(tokens)

    def forward(self, x):
        return self.norm(self._encode(x).mean(1))  # (B, D)

    def tokens(self, x):
        """``(B, N, D)``: every tubelet's output token, normalised (the attentive probe's input)."""
        return self.norm(self._encode(x))

    def draw_visible(self, batch: int, ratio: float, kind: str) -> torch.Tensor:
        """``(batch, M)`` visible-token indices for :meth:`masked` on this model's grid (:func:`draw_visible`)."""
        return draw_visible(batch, self.grid, ratio, kind)

    def masked(self, x, visible):
        """Masked encoding (:func:`draw_visible`): ``(B, 1 + M, D)``, the pooled feature of the visible tokens
        (as :meth:`forward` pools all) followed by the ``M`` visible tokens, each normalised."""
        encoded = self._encode(x, visible)  # (B, M, D)
        return self.norm(torch.cat([encoded.mean(1, keepdim=True), encoded], 1))

    def initialise_from(self, source: str) -> None:
        """``student.init_from``: a timm image ViT (a local file or a timm name) inflated into this model."""
        self.inflate_from(image_state(source), source)

    @torch.no_grad()
    def inflate_from(self, state: dict, source: str) -> None:
        """Load the spatial weights of a timm image ViT of the same width and depth (see the module doc)."""
        own = self.state_dict()
        w2d = state.get("patch_embed.proj.weight")
        if w2d is None or w2d.shape[0] != self.feature_dim:
            raise CheckpointError(f"{source}: not a timm ViT of width {self.feature_dim} (no matching "
                                  f"patch_embed.proj.weight)")
        if w2d.shape[-1] != self.patch:
            w2d = F.interpolate(w2d, size=(self.patch, self.patch), mode="bicubic", align_corners=False)
        unsupported = [k for k in state if (k.startswith("blocks.") and k not in own) or k.startswith("norm_pre.")]
        if unsupported:  # layer scale, pre-norm (CLIP-style) and other variants would be dropped silently
            raise CheckpointError(f"{source}: holds weights a plain ViT does not have (first: {unsupported[0]}); "
                                  f"inflation takes standard timm ViTs (vit_*_patch16_224.*, DeiT)")
        bias = state.get("patch_embed.proj.bias", torch.zeros(self.feature_dim))
        new = {"patch_embed.proj.weight": w2d[:, :, None].repeat(1, 1, self.tubelet, 1, 1) / self.tubelet,
               "patch_embed.proj.bias": bias}
        pos = state.get("pos_embed")
        if pos is not None:
            side = math.isqrt(pos.shape[1])
            grid = pos[:, pos.shape[1] - side * side:]  # drop the class/register tokens' entries
            grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, s, s)
            grid = F.interpolate(grid, size=self.grid[1:], mode="bicubic", align_corners=False)
            new["pos_embed"] = grid.flatten(2).transpose(1, 2)
        new["time_embed"] = torch.zeros_like(own["time_embed"])
        for k, v in state.items():
            if k.startswith("fc_norm.") and "norm.weight" not in state:  # timm's mean-pooled ViTs
                k = k[len("fc_"):]
            if k.startswith(("blocks.", "norm.")) and k in own:
                new[k] = v
        missing = [k for k in own if k.startswith("blocks.") and k not in new]
        if missing:
            raise CheckpointError(f"{source}: lacks {len(missing)} block weights of this ViT (first: {missing[0]}); "
                                  f"is it the same size?")
        try:
            self.load_state_dict(new, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{source}: shapes do not match this ViT ({first_line(e)})") from None


def visible_count(grid: tuple[int, int, int], ratio: float, kind: str) -> int:
    """How many of a ``(T', H', W')`` token grid's tokens stay visible: ``round(ratio * n)`` of ``n`` are masked,
    ``n`` the patches (tube: the whole column through time goes) or all tokens (random)."""
    t, h, w = grid
    n = h * w if kind == "tube" else t * h * w
    keep = n - round(ratio * n)
    return keep * t if kind == "tube" else keep


def draw_visible(batch: int, grid: tuple[int, int, int], ratio: float, kind: str) -> torch.Tensor:
    """``(batch, M)`` indices of each video's visible tokens, ascending, in the student's token order (time,
    then rows, then columns); ``M`` = :func:`visible_count`. Drawn from torch's global generator (a run's
    checkpoint keeps its state, so a resumed run draws the same masks)."""
    t, h, w = grid
    if kind == "tube":
        keep = visible_count(grid, ratio, kind) // t
        patches = torch.rand(batch, h * w).argsort(1)[:, :keep].sort(1).values  # (B, keep) of each frame's grid
        return (torch.arange(t)[None, :, None] * (h * w) + patches[:, None]).flatten(1)  # (B, T' * keep)
    keep = visible_count(grid, ratio, kind)
    return torch.rand(batch, t * h * w).argsort(1)[:, :keep].sort(1).values  # (B, M)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_vit(cfg) -> None:
    d, s = cfg.data, cfg.student
    if d.size % s.patch_size or d.frames % s.tubelet:
        raise ConfigError("student.patch_size" if d.size % s.patch_size else "student.tubelet",
                          f"data.size={d.size} and data.frames={d.frames} must split into {s.tubelet}x"
                          f"{s.patch_size}x{s.patch_size} tubelets")
    grid = (d.frames // s.tubelet, d.size // s.patch_size, d.size // s.patch_size)
    if s.mask_ratio and visible_count(grid, s.mask_ratio, s.mask_type) == 0:
        raise ConfigError("student.mask_ratio", f"{s.mask_ratio} of {s.mask_type} masking leaves no token "
                                                f"of the {grid[0]}x{grid[1]}x{grid[2]} grid visible")


for _arch in VIT_SIZES:
    register_student(StudentArch(
        _arch, lambda frames, size, patch_size=16, tubelet=2, _arch=_arch, **_: VideoViT(_arch, frames, size, patch_size, tubelet),
        _check_vit, init_from=True, checkpointing=True, tokens=True))
