import math

import pytest
import torch

from dtgnet.objectives.losses import (
    cosine_regression,
    info_nce,
    margin_contrastive,
    pair_term,
    relational,
    reverse_contrast,
    segment_alignment,
    token_distillation,
)
from dtgnet.objectives.objective import dtg_loss
from dtgnet.registry import TEACHER_TERMS


def naive_info_nce(q, k, tau, extra=None):
    keys = list(k) + (list(extra) if extra is not None else [])
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        sims = [float(qi @ (kj / kj.norm())) / tau for kj in keys]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(q)


def naive_margin(q, k, m):
    b = len(q)
    qn = [x / x.norm() for x in q]
    kn = [x / x.norm() for x in k]
    pos = sum(float((qn[i] - kn[i]).norm()) ** 2 for i in range(b)) / b
    neg = [max(0.0, m - float((qn[i] - kn[j]).norm())) ** 2 for i in range(b) for j in range(b) if i != j]
    return pos + sum(neg) / len(neg)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_matches_loop(tau):
    g = torch.Generator().manual_seed(0)
    q, k, extra = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    assert info_nce(q, k, tau).item() == pytest.approx(naive_info_nce(q, k, tau), rel=1e-5)
    assert info_nce(q, k, tau, extra).item() == pytest.approx(naive_info_nce(q, k, tau, extra), rel=1e-5)


@pytest.mark.parametrize("margin", [0.5, 1.0, 1.9])
def test_margin_contrastive_matches_loop(margin):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert margin_contrastive(q, k, margin).item() == pytest.approx(naive_margin(q, k, margin), rel=1e-5)


def test_losses_prefer_matching_pairs():
    x = torch.randn(8, 16)
    assert info_nce(x, x, 0.1) < info_nce(x, x.roll(1, 0), 0.1)
    assert margin_contrastive(x, x, 1.0) < margin_contrastive(x, x.roll(1, 0), 1.0)
    assert torch.isfinite(torch.autograd.grad(margin_contrastive(x.requires_grad_(), x.detach(), 1.0), x)[0]).all()


def test_dtg_loss_is_weighted_sum_of_symmetric_cross_view_terms():
    g = torch.Generator().manual_seed(2)
    b, d = 4, 8
    s_a, s_b = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    u_a = [torch.randn(b, d, generator=g) for _ in range(2)]
    u_b = [torch.randn(b, d, generator=g) for _ in range(2)]
    t_a = [torch.randn(b, d, generator=g) for _ in range(2)]
    t_b = [torch.randn(b, d, generator=g) for _ in range(2)]
    w = torch.tensor([0.3, 2.0])
    res = dtg_loss(s_a, s_b, u_a, u_b, t_a, t_b, w, self_weight=0.5, tau=0.2)
    l0 = 0.5 * (naive_info_nce(s_a, s_b, 0.2) + naive_info_nce(s_b, s_a, 0.2))
    lk = [0.5 * (naive_info_nce(u_a[k], t_b[k], 0.2) + naive_info_nce(u_b[k], t_a[k], 0.2)) for k in range(2)]
    assert res.self_term.item() == pytest.approx(l0, rel=1e-5)
    assert [t.item() for t in res.teacher_terms] == pytest.approx(lk, rel=1e-5)
    assert res.total.item() == pytest.approx(0.5 * l0 + 0.3 * lk[0] + 2.0 * lk[1], rel=1e-5)
    m = dtg_loss(None, None, u_a, u_b, t_a, t_b, w, 0.0, form="margin", margin=1.0)
    assert m.total.item() == pytest.approx(sum(
        w[k].item() * 0.5 * (naive_margin(u_a[k], t_b[k], 1.0) + naive_margin(u_b[k], t_a[k], 1.0))
        for k in range(2)), rel=1e-5)


def test_pair_term_rejects_unknown_form():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="unknown loss form 'cosine'"):
        pair_term(x, x, x, x, "cosine", 0.1, 1.0)


def test_pair_term_with_a_queue_is_the_symmetric_loop():
    g = torch.Generator().manual_seed(5)
    u_a, u_b, t_a, t_b = torch.randn(4, 6, 5, generator=g).unbind(0)
    queue = torch.randn(7, 5, generator=g)  # past teacher embeddings: extra negatives in both directions
    expected = 0.5 * (naive_info_nce(u_a, t_b, 0.2, queue) + naive_info_nce(u_b, t_a, 0.2, queue))
    assert pair_term(u_a, u_b, t_a, t_b, "infonce", 0.2, 1.0, queue).item() == pytest.approx(expected, rel=1e-5)


class FactoryDevices(torch.overrides.TorchFunctionMode):
    """Records the ``device`` every tensor factory (arange, eye, ...) was called with."""

    FACTORIES = (torch.arange, torch.eye, torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor)

    def __init__(self):
        super().__init__()
        self.devices = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            self.devices.append(kwargs.get("device"))
        return func(*args, **kwargs)


def test_the_losses_make_every_tensor_on_their_inputs_device():
    """A label or mask made on the default device would fail on a GPU; on a CPU-only machine only the ``device``
    argument shows it."""
    q, k, r = torch.randn(3, 4, 5).unbind(0)
    with FactoryDevices() as made:
        for loss in (info_nce(q, k, 0.1), margin_contrastive(q, k, 1.0), relational(q, k, 0.1),
                     reverse_contrast(q, k, r, 0.1), segment_alignment(q[:, None], k[:, None], 0.1)):
            assert torch.isfinite(loss)
    assert made.devices and all(d == q.device for d in made.devices), made.devices


def test_cosine_regression_matches_loop():
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    want = sum(1 - float(q[i] @ k[i] / (q[i].norm() * k[i].norm())) for i in range(5)) / 5
    assert float(cosine_regression(q, k)) == pytest.approx(want, abs=1e-6)
    assert float(cosine_regression(q, 3 * q)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_relational_matches_loop(tau):
    s, t = torch.randn(6, 8), torch.randn(6, 12)  # widths may differ: only similarities are compared
    sn, tn = [x / x.norm() for x in s], [x / x.norm() for x in t]
    total = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        zs = [math.exp(float(sn[i] @ sn[j]) / tau) for j in others]
        zt = [math.exp(float(tn[i] @ tn[j]) / tau) for j in others]
        ps, pt = [z / sum(zs) for z in zs], [z / sum(zt) for z in zt]
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    assert float(relational(s, t, tau)) == pytest.approx(total / 6, rel=1e-5)
    assert float(relational(t, t, tau)) == pytest.approx(0.0, abs=1e-6)  # the same structure costs nothing


def test_distillation_terms_add_inside_each_weighted_teacher_term():
    g = torch.Generator().manual_seed(0)
    u_a, u_b, t_a, t_b = (torch.randn(4, 6, generator=g) for _ in range(4))
    w = torch.tensor([0.5])
    base = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0)
    both = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0, regression=2.0, relation=3.0, relation_tau=0.2)
    extra = (2.0 * 0.5 * (cosine_regression(u_a, t_a) + cosine_regression(u_b, t_b))
             + 3.0 * 0.5 * (relational(u_a, t_a, 0.2) + relational(u_b, t_b, 0.2)))
    torch.testing.assert_close(both.teacher_terms[0], base.teacher_terms[0] + extra)
    torch.testing.assert_close(both.total, 0.5 * both.teacher_terms[0])


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_reverse_contrast_matches_loop(tau):
    q, k, r = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    total = 0.0
    for i in range(5):
        qi = q[i] / q[i].norm()
        sims = [float(qi @ (kj / kj.norm())) / tau for kj in k] + [float(qi @ (r[i] / r[i].norm())) / tau]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    assert float(reverse_contrast(q, k, r, tau)) == pytest.approx(total / 5, rel=1e-5)
    # a reversed sequence that looks like its forward one costs more than one that does not
    assert float(reverse_contrast(k, k, k, tau)) > float(reverse_contrast(k, k, -k, tau))


def test_time_arrow_term_adds_to_the_self_term():
    g = torch.Generator().manual_seed(1)
    s_a, s_b, s_r, u, t = (torch.randn(4, 6, generator=g) for _ in range(5))
    w = torch.tensor([1.0])
    base = dtg_loss(s_a, s_b, [u], [u], [t], [t], w, 0.5)
    arrow = dtg_loss(s_a, s_b, [u], [u], [t], [t], w, 0.5, reverse=2.0, self_reversed=s_r)
    torch.testing.assert_close(arrow.self_term, base.self_term + 2.0 * reverse_contrast(s_b, s_a, s_r, 0.1))
    torch.testing.assert_close(arrow.total - base.total, 0.5 * 2.0 * reverse_contrast(s_b, s_a, s_r, 0.1))
    with pytest.raises(ValueError, match="reversed view"):
        dtg_loss(s_a, s_b, [u], [u], [t], [t], w, 0.5, reverse=2.0)


def test_segment_alignment_matches_loop():
    u, t = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    per_position = [naive_info_nce(u[:, s], t[:, s], 0.2) for s in range(3)]
    assert float(segment_alignment(u, t, 0.2)) == pytest.approx(sum(per_position) / 3, rel=1e-5)


def test_segment_term_adds_inside_each_weighted_teacher_term():
    g = torch.Generator().manual_seed(2)
    u_a, u_b, t_a, t_b = (torch.randn(4, 6, generator=g) for _ in range(4))
    s_a, s_b, f_a, f_b = (torch.randn(4, 3, 6, generator=g) for _ in range(4))
    w = torch.tensor([0.5])
    base = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0)
    seg = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0, segment=2.0, segments=([s_a], [s_b], [f_a], [f_b]))
    extra = 2.0 * 0.5 * (segment_alignment(s_a, f_a, 0.1) + segment_alignment(s_b, f_b, 0.1))
    torch.testing.assert_close(seg.teacher_terms[0], base.teacher_terms[0] + extra)
    with pytest.raises(ValueError, match="per-segment"):
        dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0, segment=2.0)


def naive_token_loss(p, z, form):
    """Token by token, as UMT writes it: unit vectors, then (1 - cos) or the squared distance per channel."""
    total, count = 0.0, 0
    for b in range(p.shape[0]):
        for m in range(p.shape[1]):
            pn, zn = p[b, m] / p[b, m].norm(), z[b, m] / z[b, m].norm()
            if form == "cosine":
                total += 1 - float(pn @ zn)
                count += 1
            else:
                total += sum(float(pn[c] - zn[c]) ** 2 for c in range(p.shape[2]))
                count += p.shape[2]
    return total / count


@pytest.mark.parametrize("form", ["cosine", "l2"])
def test_token_distillation_matches_loop(form):
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    assert float(token_distillation(p, z, form)) == pytest.approx(naive_token_loss(p, z, form), rel=1e-5)
    # on unit vectors ||p - z||^2 = 2 - 2 cos: l2 is the cosine form scaled by 2 / C
    ratio = token_distillation(p, z, "l2") / token_distillation(p, z, "cosine")
    assert float(ratio) == pytest.approx(2 / 7, rel=1e-5)
    with pytest.raises(ValueError, match="unknown token loss form"):
        token_distillation(p, z, "l1")


def test_token_term_adds_inside_each_weighted_teacher_term_with_or_without_the_clip_contrast():
    g = torch.Generator().manual_seed(4)
    u_a, u_b, t_a, t_b = (torch.randn(4, 6, generator=g) for _ in range(4))
    p_a, p_b, z_a, z_b = (torch.randn(4, 5, 3, generator=g) for _ in range(4))
    w = torch.tensor([0.5])
    term = [(2.0, TEACHER_TERMS.get("token", "loss"))]
    tokens = ([p_a], [p_b], [z_a], [z_b])
    base = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0)
    both = dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0, extra_terms=term, tokens=tokens)
    extra = 2.0 * 0.5 * (token_distillation(p_a, z_a) + token_distillation(p_b, z_b))
    torch.testing.assert_close(both.teacher_terms[0], base.teacher_terms[0] + extra)
    torch.testing.assert_close(both.total, 0.5 * (base.teacher_terms[0] + extra))
    alone = dtg_loss(None, None, [None], [None], [t_a], [t_b], w, 0.0, extra_terms=term, tokens=tokens,
                     clip_weight=0.0)  # no clip heads: the token terms alone, as UMT
    torch.testing.assert_close(alone.teacher_terms[0], extra)
    with pytest.raises(ValueError, match="token term needs"):
        dtg_loss(None, None, [u_a], [u_b], [t_a], [t_b], w, 0.0, extra_terms=term)
