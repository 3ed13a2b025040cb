"""The DTG objective: ``L_DTG = w_0 L_0 + sum_k w_k L_k`` as a pure function (:func:`dtg_loss`) and as the
module a training step calls (:class:`DTGObjective`), which is built once from the loss config and owns what
lives across steps: the teacher weighting (learned weights train with the student) and the queues of past
teacher embeddings (frozen teachers keep them valid negatives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..registry import TEACHER_TERMS
from .losses import pair_term, reverse_contrast
from .terms import TeacherTerm, TeacherView
from .weighting import build_weighting


@dataclass
class DTGLoss:
    total: Tensor
    """w_0 L_0 + sum_k w_k L_k (scalar)."""
    self_term: Tensor
    """L_0 (scalar; zero when there is no self head)."""
    teacher_terms: list[Tensor]
    """L_k per teacher (scalars)."""


def dtg_loss(self_a: Tensor | None, self_b: Tensor | None, student_a: list[Tensor], student_b: list[Tensor],
             teacher_a: list[Tensor], teacher_b: list[Tensor], weights: Tensor, self_weight: float,
             form: str = "infonce", tau: float = 0.1, margin: float = 1.0,
             queues: list[Tensor | None] | None = None, regression: float = 0.0, relation: float = 0.0,
             relation_tau: float = 0.1, reverse: float = 0.0, self_reversed: Tensor | None = None,
             segment: float = 0.0, segments: tuple[list[Tensor], ...] | None = None,
             extra_terms: Sequence[tuple[float, TeacherTerm]] = (), clip_weight: float = 1.0,
             tokens: tuple[list[Tensor], ...] | None = None, token_form: str = "cosine") -> DTGLoss:
    """Total DTG loss ``L = w_0 L_0 + sum_k w_k L_k``.

    ``L_0`` = :func:`pair_term` between the self-head embeddings of the two views (plain two-view SSL), plus
    ``reverse * R(self_b, self_a, self_reversed)`` (:func:`reverse_contrast`) when ``reverse`` > 0;
    ``L_k`` = ``clip_weight`` times :func:`pair_term` between the student's head-k embeddings ``u_k`` and
    teacher k's embeddings ``t_k``, cross-view (u_k^a with t_k^b and u_k^b with t_k^a), plus, when their
    weights are > 0,
    ``regression * 1/2 [R(u_k^a, t_k^a) + R(u_k^b, t_k^b)]`` (:func:`cosine_regression`) and
    ``relation * 1/2 [S(u_k^a, t_k^a) + S(u_k^b, t_k^b)]`` (:func:`relational`) and
    ``segment * 1/2 [A(s_k^a, f_k^a) + A(s_k^b, f_k^b)]`` (:func:`segment_alignment`).

    Args:
        self_a, self_b: ``(B, D0)`` self-head embeddings of views a and b, or None.
        student_a, student_b: K tensors ``(B, D)``: head-k embeddings per view (None each where no clip-level
            term reads them: ``clip_weight`` 0 and no regression, relational or segment term).
        teacher_a, teacher_b: K tensors ``(B, D_k)`` teacher embeddings per view (no gradient expected).
        weights: ``(K,)`` teacher weights w_k (may carry gradient, e.g. learned weighting).
        self_weight: w_0.
        queues: K optional ``(Q, D)`` banks of past teacher embeddings used as extra negatives (InfoNCE).
        regression, relation: weights of the feature-regression and relational terms inside each L_k.
        relation_tau: temperature of the relational term.
        reverse, self_reversed: weight of the time-arrow term and the ``(B, D0)`` self-head embeddings of view
            a played backwards.
        segment, segments: weight of per-segment alignment and ``(s^a, s^b, f^a, f^b)``, K tensors each:
            ``(B, T, D)`` head-k embeddings of each segment and ``(B, T, D_k)`` teacher-k embeddings of each
            segment's frame, per view.
        extra_terms: ``(weight, term)`` pairs of registered :class:`~dtgnet.objectives.terms.TeacherTerm`, added
            inside each L_k after the three above (the config-driven path: :class:`DTGObjective`), e.g. the
            token term (:func:`~dtgnet.objectives.losses.token_distillation`).
        clip_weight: weight of the cross-view contrast inside each L_k (0: the other terms alone).
        tokens, token_form: ``(p^a, p^b, z^a, z^b)``, K tensors each: ``(B, M, C_k)`` the student's visible tokens
            through token head k and teacher k's tokens at their places, per view; the token loss's form.
    """
    k = len(teacher_a)
    if not (len(student_a) == len(student_b) == len(teacher_b) == k) or weights.shape != (k,):
        raise ValueError(f"expected {k} teachers in every argument and weights of shape ({k},)")
    ref = teacher_a[0] if k else self_a
    if ref is None:
        raise ValueError("dtg_loss needs a self head or at least one teacher")
    queues = queues or [None] * k
    self_term = ref.new_zeros(())
    if self_a is not None and self_b is not None and self_weight > 0:
        self_term = pair_term(self_a, self_b, self_a, self_b, form, tau, margin)
        if reverse:
            if self_reversed is None:
                raise ValueError("the time-arrow term needs the self embeddings of the reversed view")
            self_term = self_term + reverse * reverse_contrast(self_b, self_a, self_reversed, tau)
    terms = [clip_weight * pair_term(student_a[i], student_b[i], teacher_a[i], teacher_b[i], form, tau, margin,
                                     queues[i]) if clip_weight else ref.new_zeros(()) for i in range(k)]
    settings = {"tau": tau, "relational_tau": relation_tau, "token_form": token_form}
    named = [(w, TEACHER_TERMS.get(name, "loss")) for name, w in
             (("regression", regression), ("relational", relation), ("segment", segment)) if w]
    extras = [*named, *extra_terms]
    for i in range(k if extras else 0):  # further terms inside L_k, each weighted (objectives.terms)
        per_segment = tuple(x[i] for x in segments) if segments is not None else (None,) * 4
        per_token = tuple(x[i] for x in tokens) if tokens is not None else ()
        view = TeacherView(student_a[i], student_b[i], teacher_a[i], teacher_b[i], *per_segment, *per_token)
        for w, term in extras:
            terms[i] = terms[i] + w * term.compute(view, settings)
    total = self_weight * self_term
    if k:
        total = total + (weights * torch.stack(terms)).sum()
    return DTGLoss(total, self_term, terms)


@dataclass
class StudentOutputs:
    """The student's side of a step, every tensor over the global batch (B videos)."""

    weights: Tensor
    """``(K,)`` teacher weights w_k, read inside the student's forward so that DDP sees learned ones."""
    regulariser: Tensor
    """The weighting's regulariser (learned weighting), a scalar."""
    heads_a: list[Tensor]
    """K tensors ``(B, D_k)``: head-k embeddings of view a."""
    heads_b: list[Tensor]
    self_a: Tensor | None = None
    """``(B, D0)`` self-head embeddings of view a; None without a self head."""
    self_b: Tensor | None = None
    self_reversed: Tensor | None = None
    """``(B, D0)`` self-head embeddings of view a played backwards (``loss.reverse_weight``)."""
    segments_a: list[Tensor] | None = None
    """K tensors ``(B, T, D_k)``: head-k embeddings of each segment of view a (per-segment terms)."""
    segments_b: list[Tensor] | None = None
    tokens_a: list[Tensor] | None = None
    """K tensors ``(B, M, C_k)``: view a's visible tokens through token head k (token distillation)."""
    tokens_b: list[Tensor] | None = None


@dataclass
class TeacherEmbeddings:
    """The teachers' side of a step (no gradient), over the global batch."""

    a: list[Tensor]
    """K tensors ``(B, D_k)``: teacher k's sequence embeddings of view a."""
    b: list[Tensor]
    frames_a: list[Tensor] | None = None
    """K tensors ``(B, T, D_k)``: each frame's embedding (per-segment terms), else None."""
    frames_b: list[Tensor] | None = None
    tokens_a: list[Tensor] | None = None
    """K tensors ``(B, M, C_k)``: teacher k's tokens at the places of view a's visible student tokens."""
    tokens_b: list[Tensor] | None = None


class DTGObjective(nn.Module):
    """``L_DTG`` of one step from the loss config (:class:`~dtgnet.config.LossConfig`): owns the weighting
    (a submodule, so learned weights are parameters) and the queues, and knows which extra student outputs
    its terms need (:attr:`needs_reverse`, :attr:`needs_segments`)."""

    def __init__(self, loss_cfg, initial_weights: list[float], teacher_dims: list[int], device=None):
        super().__init__()
        self.cfg = loss_cfg
        self.weighting = build_weighting(loss_cfg, initial_weights)
        weighted = [(getattr(loss_cfg, t.weight_key), t) for t in TEACHER_TERMS]
        self.terms = [(w, t) for w, t in weighted if w > 0]
        self.queues = [torch.zeros(0, d, device=device) for d in teacher_dims]  # (Q, D_k), newest first

    @property
    def needs_reverse(self) -> bool:
        return self.cfg.reverse_weight > 0

    @property
    def needs_segments(self) -> bool:
        return any(term.needs_segments for _, term in self.terms)

    @property
    def needs_tokens(self) -> bool:
        return any(term.needs_tokens for _, term in self.terms)

    def observe(self, teacher: TeacherEmbeddings) -> None:
        """Before the student's forward: the adaptive weighting scores this batch's teacher embeddings."""
        self.weighting.update(teacher.a, teacher.b)

    def forward(self, student: StudentOutputs, teacher: TeacherEmbeddings) -> DTGLoss:
        cfg = self.cfg
        segments = tokens = None
        if self.needs_segments:
            segments = (student.segments_a, student.segments_b, teacher.frames_a, teacher.frames_b)
        if self.needs_tokens:
            tokens = (student.tokens_a, student.tokens_b, teacher.tokens_a, teacher.tokens_b)
        result = dtg_loss(student.self_a, student.self_b, student.heads_a, student.heads_b, teacher.a, teacher.b,
                          student.weights, cfg.self_weight, form=cfg.form, tau=cfg.tau, margin=cfg.margin,
                          queues=self.queues if cfg.queue_size else None, relation_tau=cfg.relational_tau,
                          reverse=cfg.reverse_weight, self_reversed=student.self_reversed, segments=segments,
                          extra_terms=self.terms, clip_weight=cfg.clip_weight, tokens=tokens,
                          token_form=cfg.token_form)
        if cfg.queue_size:  # this batch's embeddings join the queue after the loss, as negatives for later ones
            self.queues = [torch.cat([a, b, q])[:cfg.queue_size] for a, b, q in zip(teacher.a, teacher.b, self.queues)]
        return result

    def state(self) -> dict:
        """What a checkpoint keeps (``weighting`` state dict, ``queues``)."""
        return {"weighting": self.weighting.state_dict(), "queues": self.queues}

    def load_state(self, state: dict, device) -> None:
        self.weighting.load_state_dict(state["weighting"])
        self.queues = [q.to(device) for q in state["queues"]]
