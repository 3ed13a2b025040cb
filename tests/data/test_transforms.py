import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from dtgnet.data.transforms import (
    IDENTITY,
    apply_colour,
    crop_box,
    random_colour,
    random_geometry,
    resized_crop,
    shift_hue,
)


def naive_colour(seq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """One sequence through torchvision's own functional ops, in the documented order."""
    x = F.to_dtype(seq, torch.float32, scale=True)
    x = F.adjust_brightness(x, float(p[0]))
    x = F.adjust_contrast(x, float(p[1]))
    x = F.adjust_saturation(x, float(p[2]))
    x = F.adjust_hue(x, float(p[3]))
    return F.rgb_to_grayscale(x, num_output_channels=3) if p[4] else x


def test_batched_colour_matches_torchvision_per_sequence():
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 256, (6, 3, 3, 20, 20), generator=g, dtype=torch.uint8)  # (N, T, 3, S, S)
    rng = np.random.default_rng(1)
    params = torch.stack([random_colour(rng, strong=True) for _ in range(6)])
    params[0] = torch.tensor(IDENTITY)
    params[1, 4] = 1.0  # at least one grayscale sequence
    params[2, 3] = -0.1  # hue at both ends of its range
    params[3, 3] = 0.1
    out = apply_colour(seqs, params)
    for n in range(6):
        assert torch.allclose(out[n], naive_colour(seqs[n], params[n]), atol=2e-5), n
    assert torch.allclose(out[0], seqs[0].float() / 255, atol=1e-6)


def test_hue_shift_matches_torchvision_on_saturated_and_gray_pixels():
    x = torch.rand(4, 3, 16, 16)
    x[:, :, :4] = x[:, :1, :4]  # gray rows: hue undefined, must stay gray
    x[:, 0, 4:6], x[:, 1, 4:6] = 1.0, 1.0  # ties between the max channels
    for shift in (-0.5, -0.13, 0.0, 0.07, 0.5):
        want = F.adjust_hue(x, shift)
        assert torch.allclose(shift_hue(x, torch.tensor(shift).view(1, 1, 1, 1)), want, atol=2e-6), shift


def test_crop_box_follows_the_scale_and_ratio_ranges():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        top, left, h, w = crop_box(rng, 60, 80)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        areas.append(h * w / (60 * 80))
    assert 0.33 <= min(areas) and max(areas) <= 1.0 and np.std(areas) > 0.1
    assert crop_box(np.random.default_rng(0), 10, 200) == (0, 93, 10, 13)  # too wide: central crop at 4:3


def test_geometry_is_one_crop_for_every_frame_and_views_differ():
    frame = torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8)
    seq = frame.expand(6, -1, -1, -1).clone()  # 6 identical frames
    rng = np.random.default_rng(0)
    views = [random_geometry(seq, 24, rng, flip=True)[0] for _ in range(4)]
    for v in views:
        assert v.shape == (6, 3, 24, 24) and v.dtype == torch.uint8
        assert torch.equal(v, v[:1].expand_as(v))
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_geometry_says_where_the_crop_lies_and_whether_it_is_mirrored():
    """The returned box and flip reproduce the view from the frame (the same draws as the view's own)."""
    seq = torch.randint(0, 255, (2, 3, 30, 50), dtype=torch.uint8)  # wide: the box is in fractions of each side
    flips = set()
    for seed in range(12):
        view, (y0, x0, y1, x1, aspect, flipped) = random_geometry(seq, 16, np.random.default_rng(seed), flip=True)
        top, left, h, w = crop_box(np.random.default_rng(seed), 30, 50)
        assert (y0, x0, y1, x1) == pytest.approx((top / 30, left / 50, (top + h) / 30, (left + w) / 50))
        assert aspect == pytest.approx(50 / 30)
        expected = resized_crop(seq, top, left, h, w, 16)
        assert torch.equal(view, expected.flip(-1) if flipped else expected)
        flips.add(float(flipped))
    assert flips == {0.0, 1.0}
    assert random_geometry(seq, 16, np.random.default_rng(0), flip=False)[1][5] == 0


def test_resized_crop_is_torchvisions_bit_for_bit():
    """The direct kernel call must not change a single pixel of what torchvision's resized_crop gives."""
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (4, 37, 53, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    for _ in range(50):
        box = crop_box(rng, 37, 53)
        for size in (16, 32, 48):
            assert torch.equal(resized_crop(frames, *box, size), F.resized_crop(frames, *box, [size, size], antialias=True))
    assert torch.equal(resized_crop(frames, 0, 0, 32, 32, 32), frames[..., :32, :32])


def test_colour_is_one_draw_for_every_frame():
    seq = torch.randint(0, 255, (1, 1, 3, 8, 8), dtype=torch.uint8).expand(1, 5, -1, -1, -1)
    out = apply_colour(seq, random_colour(np.random.default_rng(3), strong=True)[None])
    assert torch.equal(out[0], out[0, :1].expand_as(out[0]))


@pytest.mark.parametrize("strong", [True, False])
def test_colour_draws(strong):
    rng = np.random.default_rng(0)
    p = torch.stack([random_colour(rng, strong) for _ in range(2000)])
    if not strong:
        assert torch.equal(p, torch.tensor(IDENTITY).expand_as(p))
        return
    jittered = (p[:, :4] != torch.tensor(IDENTITY[:4])).any(1).float().mean()
    assert abs(jittered - 0.8) < 0.04 and abs(p[:, 4].mean() - 0.2) < 0.04
    assert p[:, 0].min() >= 0.6 and p[:, 0].max() <= 1.4 and p[:, 3].abs().max() <= 0.1
