"""Teacher weights: fixed, learned (uncertainty) and adaptive (label-free), against hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from dtgnet.config import LossConfig
from dtgnet.objectives.weighting import (
    AdaptiveWeights,
    FixedWeights,
    LearnedWeights,
    build_weighting,
    instance_discrimination,
)


def test_fixed_weights_are_constant_and_free():
    w = FixedWeights([1.0, 0.5])
    w.update([torch.randn(4, 3)] * 2, [torch.randn(4, 3)] * 2)
    assert w.weights().tolist() == [1.0, 0.5] and w.regulariser().item() == 0 and not list(w.parameters())


def test_learned_weights_follow_kendall():
    w = LearnedWeights([2.0, 1.0])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(w.weights(), torch.tensor([2 * math.exp(-0.5), math.exp(1.0)]))
    torch.testing.assert_close(w.regulariser(), torch.tensor(2 * 0.5 + 1 * -1.0))
    # d/ds (w0 e^-s L + w0 s) = w0 (1 - e^-s L): a term the student cannot lower (L large) gets a larger s
    loss = (w.weights() * torch.tensor([3.0, 3.0])).sum() + w.regulariser()
    loss.backward()
    torch.testing.assert_close(w.log_vars.grad, torch.tensor([2 * (1 - math.exp(-0.5) * 3), 1 - math.exp(1.0) * 3]))


def test_instance_discrimination_matches_a_loop():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    a_n, b_n = F.normalize(a, dim=1), F.normalize(b, dim=1)
    probs = []
    for i in range(5):
        logits = torch.stack([a_n[i] @ b_n[j] / 0.1 for j in range(5)])
        probs.append(torch.exp(logits[i]) / torch.exp(logits).sum())
    torch.testing.assert_close(instance_discrimination(a, b), torch.stack(probs).mean())
    assert instance_discrimination(a, a) > instance_discrimination(a, b)


def test_adaptive_weights_prefer_the_teacher_that_separates_the_videos():
    torch.manual_seed(0)
    w = AdaptiveWeights([1.0, 1.0], momentum=0.5, temperature=0.5)
    assert w.weights().tolist() == [1.0, 1.0]  # no batch seen yet: the initial weights
    sharp = torch.randn(8, 16)
    noisy_a, noisy_b = torch.randn(8, 16), torch.randn(8, 16)
    sharp_b = sharp + 0.01 * torch.randn(8, 16)
    w.update([sharp, noisy_a], [sharp_b, noisy_b])
    first = torch.stack([instance_discrimination(sharp, sharp_b), instance_discrimination(noisy_a, noisy_b)])
    assert w.weights()[0] > w.weights()[1] and w.weights().sum().item() == pytest.approx(2.0)
    w.update([sharp, noisy_a], [sharp, noisy_b])  # EMA: half the old score, half the new
    second = torch.stack([instance_discrimination(sharp, sharp), instance_discrimination(noisy_a, noisy_b)])
    ema = 0.5 * first + 0.5 * second
    torch.testing.assert_close(w.ema, ema)
    torch.testing.assert_close(w.weights(), 2.0 * torch.softmax(ema / 0.5, 0))


def test_build_weighting_reads_the_config():
    assert type(build_weighting(LossConfig(weighting="fixed"), [1.0])) is FixedWeights
    assert type(build_weighting(LossConfig(weighting="learned"), [1.0])) is LearnedWeights
    adaptive = build_weighting(LossConfig(weighting="adaptive", adaptive_momentum=0.7, adaptive_temperature=2.0), [1.0])
    assert (adaptive.momentum, adaptive.temperature) == (0.7, 2.0)


def test_adaptive_defaults_are_the_configs():
    """The class used without a config weights as the documented config defaults do."""
    cfg, w = LossConfig(), AdaptiveWeights([1.0, 2.0])
    assert (w.momentum, w.temperature) == (cfg.adaptive_momentum, cfg.adaptive_temperature)
