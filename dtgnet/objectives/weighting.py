"""Differentiated teacher weights w_k: fixed, learned (uncertainty weighting) or adaptive (label-free).

Every strategy exposes ``weights()`` (a ``(K,)`` tensor used in the loss), ``regulariser()`` (added to the
loss; zero except for learned), ``update(teacher_a, teacher_b)`` (called once per step with the batch's
teacher embeddings) and a ``state_dict`` that checkpoints carry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FixedWeights(nn.Module):
    """w_k as configured, constant."""

    def __init__(self, initial: list[float]):
        super().__init__()
        self.register_buffer("initial", torch.tensor(initial, dtype=torch.float32))

    def weights(self) -> torch.Tensor:
        return self.initial

    def regulariser(self) -> torch.Tensor:
        return self.initial.new_zeros(())

    def update(self, teacher_a, teacher_b) -> None:
        pass


class LearnedWeights(FixedWeights):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, 2018): ``w_k = w_k^0 exp(-s_k)`` with a
    learnable log-variance s_k and the regulariser ``sum_k w_k^0 s_k``, so a term the student cannot lower
    is down-weighted instead of dominating."""

    def __init__(self, initial: list[float]):
        super().__init__(initial)
        self.log_vars = nn.Parameter(torch.zeros(len(initial)))

    def weights(self) -> torch.Tensor:
        return self.initial * torch.exp(-self.log_vars)

    def regulariser(self) -> torch.Tensor:
        return (self.initial * self.log_vars).sum()


def instance_discrimination(t_a: torch.Tensor, t_b: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """How well embeddings tell the batch's videos apart: mean probability that view a of video i picks
    view b of video i among all videos' b views. ``t_a``, ``t_b``: ``(B, D)`` -> scalar in (0, 1]."""
    logits = F.normalize(t_a, dim=1) @ F.normalize(t_b, dim=1).T / tau  # (B, B)
    return logits.softmax(1).diagonal().mean()


class AdaptiveWeights(FixedWeights):
    """Label-free: each step scores every teacher by :func:`instance_discrimination` of its own embeddings of
    the two views, keeps an EMA of the score, and sets ``w = sum(w^0) * softmax(ema / temperature)``. A teacher
    whose features cannot separate the videos in a batch gives little contrastive signal and gets less weight."""

    def __init__(self, initial: list[float], momentum: float = 0.9, temperature: float = 0.5):
        super().__init__(initial)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("ema", torch.full((len(initial),), float("nan")))

    def weights(self) -> torch.Tensor:
        if torch.isnan(self.ema).any():
            return self.initial
        return self.initial.sum() * torch.softmax(self.ema / self.temperature, 0)

    @torch.no_grad()
    def update(self, teacher_a, teacher_b) -> None:
        scores = torch.stack([instance_discrimination(a.float(), b.float()) for a, b in zip(teacher_a, teacher_b)])
        scores = scores.to(self.ema.device)
        if torch.isnan(self.ema).any():
            self.ema.copy_(scores)
        else:
            self.ema.mul_(self.momentum).add_((1 - self.momentum) * scores)


def build_weighting(loss_cfg, initial: list[float]) -> FixedWeights:
    if loss_cfg.weighting == "fixed":
        return FixedWeights(initial)
    if loss_cfg.weighting == "learned":
        return LearnedWeights(initial)
    return AdaptiveWeights(initial, loss_cfg.adaptive_momentum, loss_cfg.adaptive_temperature)
