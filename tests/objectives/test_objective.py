"""DTGObjective: the config-driven loss of a step equals the pure function's, owns the queues, and takes
registered terms."""
import dataclasses

import torch

from dtgnet.config import LossConfig
from dtgnet.objectives import DTGObjective, dtg_loss
from dtgnet.objectives.objective import StudentOutputs, TeacherEmbeddings
from dtgnet.objectives.terms import TeacherTerm
from dtgnet.registry import TEACHER_TERMS


def outputs(b=6, dims=(5, 7), d0=4, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    student = StudentOutputs(torch.tensor([1.0, 0.5]), torch.zeros(()), [r(b, d) for d in dims], [r(b, d) for d in dims],
                             r(b, d0), r(b, d0), r(b, d0), [r(b, t, d) for d in dims], [r(b, t, d) for d in dims])
    teacher = TeacherEmbeddings([r(b, d) for d in dims], [r(b, d) for d in dims], [r(b, t, d) for d in dims],
                                [r(b, t, d) for d in dims])
    return student, teacher


def test_objective_equals_the_pure_function_with_every_term():
    cfg = LossConfig(self_weight=0.7, tau=0.2, regression_weight=0.3, relational_weight=0.4, segment_weight=0.5,
                     reverse_weight=0.6, relational_tau=0.3)
    objective = DTGObjective(cfg, [1.0, 0.5], [5, 7])
    assert objective.needs_segments and objective.needs_reverse
    s, t = outputs()
    got = objective(s, t)
    want = dtg_loss(s.self_a, s.self_b, s.heads_a, s.heads_b, t.a, t.b, s.weights, 0.7, tau=0.2, regression=0.3,
                    relation=0.4, relation_tau=0.3, reverse=0.6, self_reversed=s.self_reversed, segment=0.5,
                    segments=(s.segments_a, s.segments_b, t.frames_a, t.frames_b))
    assert torch.equal(got.total, want.total) and all(map(torch.equal, got.teacher_terms, want.teacher_terms))
    plain = DTGObjective(LossConfig(), [1.0, 0.5], [5, 7])
    assert not plain.needs_segments and not plain.needs_reverse and not plain.terms


def test_queue_holds_past_teacher_embeddings_newest_first():
    objective = DTGObjective(LossConfig(queue_size=10), [1.0, 0.5], [5, 7])
    s, t = outputs(seed=1)
    first = objective(s, t)
    assert [q.shape for q in objective.queues] == [(10, 5), (10, 7)]
    assert torch.equal(objective.queues[0][:6], t.a[0]) and torch.equal(objective.queues[0][6:], t.b[0][:4])
    second = objective(s, t)  # the same batch again: now with 10 extra negatives per teacher
    assert all(b > a for a, b in zip(first.teacher_terms, second.teacher_terms))
    fresh = DTGObjective(LossConfig(queue_size=10), [1.0, 0.5], [5, 7])
    fresh.load_state(objective.state(), "cpu")
    assert all(map(torch.equal, fresh.queues, objective.queues))


def test_a_registered_term_adds_inside_each_teacher_term(monkeypatch):
    """What docs/CONTRIBUTING.md describes: one TeacherTerm, its weight read from the loss config."""
    term = TeacherTerm("cosine_to_a", "norm_weight", lambda v, _: (v.u_a - v.t_a[:, : v.u_a.shape[1]]).pow(2).mean())
    monkeypatch.setitem(TEACHER_TERMS._entries, term.name, term)
    Extended = dataclasses.make_dataclass("Extended", [("norm_weight", float, 2.0)], bases=(LossConfig,))
    s, t = outputs(dims=(5, 5))
    base = DTGObjective(Extended(norm_weight=0.0), [1.0, 0.5], [5, 5])(s, t)
    extended = DTGObjective(Extended(), [1.0, 0.5], [5, 5])(s, t)
    for k in range(2):
        extra = (s.heads_a[k] - t.a[k]).pow(2).mean()
        torch.testing.assert_close(extended.teacher_terms[k], base.teacher_terms[k] + 2.0 * extra)
