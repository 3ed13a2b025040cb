"""DTG losses: pure functions of tensors.

Notation: B videos in a batch, two views a and b of each. ``u`` are student embeddings (after a projection
head), ``t`` teacher embeddings; both are L2-normalised inside every function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(query: Tensor, keys: Tensor, tau: float, extra_keys: Tensor | None = None) -> Tensor:
    """InfoNCE with the positives on the diagonal.

    ``L = mean_i -log( exp(q_i·k_i / tau) / sum_j exp(q_i·k_j / tau) )``, q and k L2-normalised.

    Args:
        query: ``(B, D)``.
        keys: ``(B, D)``; ``keys[i]`` is the positive of ``query[i]``, every other row a negative.
        tau: temperature > 0.
        extra_keys: optional ``(Q, D)`` further negatives (e.g. a queue of frozen-teacher embeddings).
    Returns:
        Scalar mean cross-entropy with targets ``arange(B)``.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(keys, dim=1)
    if extra_keys is not None and extra_keys.numel():
        k = torch.cat([k, F.normalize(extra_keys, dim=1)], 0)  # (B + Q, D)
    logits = q @ k.T / tau  # (B, B [+ Q])
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def margin_contrastive(query: Tensor, keys: Tensor, margin: float) -> Tensor:
    """Hadsell-style contrastive loss: pulls positives together, pushes negatives beyond ``margin``.

    ``d_ij = ||q_i - k_j||_2``;  ``L = mean_i d_ii^2 + mean_{i != j} max(0, margin - d_ij)^2``.

    Args:
        query, keys: ``(B, D)``, positives on the diagonal; B >= 2.
        margin: m in (0, 2] (unit vectors are at most 2 apart).
    Returns:
        Scalar loss.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(keys, dim=1)
    b = q.shape[0]
    d2 = (2 - 2 * q @ k.T).clamp_min(0)  # (B, B) squared distances of unit vectors
    d = (d2 + 1e-12).sqrt()  # (B, B); the epsilon keeps the gradient finite at d = 0
    eye = torch.eye(b, dtype=torch.bool, device=q.device)
    positive = d2[eye].mean()
    negative = (margin - d[~eye]).clamp_min(0).pow(2).mean()
    return positive + negative


def cosine_regression(query: Tensor, target: Tensor) -> Tensor:
    """Feature regression to a teacher's embedding, as UMT and MVD distil CLIP into video students.

    ``L = mean_i (1 - cos(q_i, k_i))``.

    Args:
        query: ``(B, D)`` student embeddings.
        target: ``(B, D)`` teacher embeddings of the same sequences (no gradient expected).
    Returns:
        Scalar in [0, 2].
    """
    return (1 - F.cosine_similarity(query, target, dim=1)).mean()


def relational(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """Relational (similarity-structure) distillation: each video's distribution over the batch's other videos,
    the student's towards the teacher's.

    ``p_i^x(j) = softmax_{j != i}(x_i · x_j / tau)`` for unit ``x``;  ``L = mean_i KL(p_i^t || p_i^s)``.

    Args:
        student: ``(B, D)`` student embeddings; B >= 2.
        teacher: ``(B, D_t)`` teacher embeddings of the same sequences (any width: only similarities are compared).
        tau: temperature > 0 of both distributions.
    Returns:
        Scalar >= 0.
    """
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    b = s.shape[0]
    log_ps = F.log_softmax((s @ s.T / tau)[off].view(b, b - 1), dim=1)  # (B, B-1): the diagonal left out
    log_pt = F.log_softmax((t @ t.T / tau)[off].view(b, b - 1), dim=1)  # (B, B-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


def segment_alignment(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """Per-segment alignment: at each segment position, InfoNCE between the student's segment features and
    the teacher's embeddings of those segments' frames, the batch's other videos as negatives.

    ``L = mean_s mean_i -log( e^{u_is·t_is/tau} / sum_j e^{u_is·t_js/tau} )``, all L2-normalised.

    Args:
        student: ``(B, T, D)`` head-k embeddings of each segment.
        teacher: ``(B, T, D)`` teacher-k embeddings of each segment's frame (no gradient expected).
        tau: temperature > 0.
    Returns:
        Scalar mean over the T positions.
    """
    return torch.stack([info_nce(student[:, s], teacher[:, s], tau) for s in range(student.shape[1])]).mean()


def reverse_contrast(query: Tensor, positive: Tensor, reversed_: Tensor, tau: float) -> Tensor:
    """Time-arrow contrast: InfoNCE whose negatives are the batch's other videos plus the query's own video
    played backwards, so features that ignore frame order cannot win.

    ``L = mean_i -log( e^{q_i·k_i/tau} / (sum_j e^{q_i·k_j/tau} + e^{q_i·r_i/tau}) )``, all L2-normalised.

    Args:
        query: ``(B, D)`` one view of each video (view b).
        positive: ``(B, D)`` the other view of the same videos (view a).
        reversed_: ``(B, D)`` view a with its frames in reverse order.
        tau: temperature > 0.
    Returns:
        Scalar mean cross-entropy.
    """
    q, k, r = (F.normalize(x, dim=1) for x in (query, positive, reversed_))
    own = (q * r).sum(1, keepdim=True)  # (B, 1): each query against its own reversed sequence
    logits = torch.cat([q @ k.T, own], 1) / tau  # (B, B + 1)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def pair_term(u_a: Tensor, u_b: Tensor, t_a: Tensor, t_b: Tensor, form: str, tau: float, margin: float,
              queue: Tensor | None = None) -> Tensor:
    """Symmetric cross-view term ``1/2 [ l(u_a, t_b) + l(u_b, t_a) ]`` for one teacher (or the self term,
    with ``t = u``), ``l`` being :func:`info_nce` or :func:`margin_contrastive`. All inputs ``(B, D)``."""
    if form == "infonce":
        return 0.5 * (info_nce(u_a, t_b, tau, queue) + info_nce(u_b, t_a, tau, queue))
    if form == "margin":
        return 0.5 * (margin_contrastive(u_a, t_b, margin) + margin_contrastive(u_b, t_a, margin))
    raise ValueError(f"unknown loss form {form!r}")


def token_distillation(student: Tensor, teacher: Tensor, form: str = "cosine") -> Tensor:
    """Masked token distillation (UMT): each visible student token, mapped into the teacher's token space,
    towards the teacher's token at the same place and time.

    ``cosine``: ``L = mean_{b,m} (1 - cos(p_bm, z_bm))``;
    ``l2`` (UMT's): ``L = mean_{b,m,c} (p^_bmc - z^_bmc)^2`` with ``p^``, ``z^`` L2-normalised over ``c``,
    which equals ``(2 - 2 cos) / C``: the same direction, scaled down by the teacher's width.

    Args:
        student: ``(B, M, C)`` the student's predictions of its M visible tokens (after the token head).
        teacher: ``(B, M, C)`` the teacher's tokens at those places (no gradient expected).
        form: ``cosine`` or ``l2``.
    Returns:
        Scalar loss.
    """
    if form == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if form == "l2":
        return F.mse_loss(F.normalize(student, dim=-1), F.normalize(teacher, dim=-1))
    raise ValueError(f"unknown token loss form {form!r}")
