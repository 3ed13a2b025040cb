"""Terms added inside each teacher's L_k beside the paper's cross-view contrast, one registry entry each.

A :class:`TeacherTerm` reads one teacher's tensors of a step (:class:`TeacherView`) and returns a scalar;
the objective adds ``weight * term`` to that teacher's L_k, in registration order, for every term whose
weight (the ``LossConfig`` field ``weight_key``) is above zero. A new term is a module that registers one
entry with :func:`register_term`, imported below, plus the config field that carries its weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from torch import Tensor

from ..registry import TEACHER_TERMS
from .losses import cosine_regression, relational, segment_alignment, token_distillation


@dataclass(frozen=True)
class TeacherView:
    """One teacher's tensors of a step (B videos, two views a and b)."""

    u_a: Tensor
    """``(B, D)`` student head-k embeddings of view a."""
    u_b: Tensor
    t_a: Tensor
    """``(B, D_k)`` teacher-k embeddings of view a (no gradient)."""
    t_b: Tensor
    s_a: Tensor | None = None
    """``(B, T, D)`` head-k embeddings of each segment of view a (terms with ``needs_segments``)."""
    s_b: Tensor | None = None
    f_a: Tensor | None = None
    """``(B, T, D_k)`` teacher-k embeddings of each segment's frame of view a."""
    f_b: Tensor | None = None
    p_a: Tensor | None = None
    """``(B, M, C_k)`` the student's visible tokens of view a through token head k (terms with ``needs_tokens``)."""
    p_b: Tensor | None = None
    z_a: Tensor | None = None
    """``(B, M, C_k)`` teacher k's tokens at those tokens' places in view a."""
    z_b: Tensor | None = None


@dataclass(frozen=True)
class TeacherTerm:
    name: str
    weight_key: str
    """The ``loss`` config field holding its weight; 0 turns it off."""
    compute: Callable[[TeacherView, Mapping[str, float]], Tensor]
    """``compute(view, settings)`` -> scalar; ``settings`` are the loss config's values (``tau``, ...)."""
    needs_segments: bool = False
    """It reads the per-segment tensors, which only students with ``per_segment`` give."""
    needs_tokens: bool = False
    """It reads the token tensors (students made of tokens, teachers with a token grid)."""


def register_term(term: TeacherTerm) -> TeacherTerm:
    return TEACHER_TERMS.add(term.name, term)


def _needs(view: TeacherView, name: str) -> None:
    if view.s_a is None or view.f_a is None:
        raise ValueError(f"the {name} term needs the per-segment student and teacher embeddings (per-segment alignment)")


def _regression(v: TeacherView, settings) -> Tensor:
    """Feature regression to the teacher's embedding of the same sequence: ``1/2 [R(u^a, t^a) + R(u^b, t^b)]``."""
    return 0.5 * (cosine_regression(v.u_a, v.t_a) + cosine_regression(v.u_b, v.t_b))


def _relational(v: TeacherView, settings) -> Tensor:
    """Similarity structure over the batch: ``1/2 [S(u^a, t^a) + S(u^b, t^b)]``."""
    tau = settings["relational_tau"]
    return 0.5 * (relational(v.u_a, v.t_a, tau) + relational(v.u_b, v.t_b, tau))


def _segment(v: TeacherView, settings) -> Tensor:
    """Per-segment alignment: ``1/2 [A(s^a, f^a) + A(s^b, f^b)]``."""
    _needs(v, "segment")
    return 0.5 * (segment_alignment(v.s_a, v.f_a, settings["tau"]) + segment_alignment(v.s_b, v.f_b, settings["tau"]))


def _token(v: TeacherView, settings) -> Tensor:
    """Masked token distillation: ``1/2 [T(p^a, z^a) + T(p^b, z^b)]``."""
    if v.p_a is None or v.z_a is None:
        raise ValueError("the token term needs the student's visible tokens and the teacher's tokens")
    form = settings["token_form"]
    return 0.5 * (token_distillation(v.p_a, v.z_a, form) + token_distillation(v.p_b, v.z_b, form))


register_term(TeacherTerm("regression", "regression_weight", _regression))
register_term(TeacherTerm("relational", "relational_weight", _relational))
register_term(TeacherTerm("segment", "segment_weight", _segment, needs_segments=True))
register_term(TeacherTerm("token", "token_weight", _token, needs_tokens=True))
