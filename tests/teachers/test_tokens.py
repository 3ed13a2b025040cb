"""Teacher tokens for masked token distillation: the grid each kind of teacher gives, its resampling to the
student's grid, and the order it is laid out in."""
import pytest
import torch

from dtgnet.config import TeacherConfig
from dtgnet.errors import ConfigError
from dtgnet.teachers import build_teacher
from dtgnet.teachers.base import callable_teacher, resample_grid
from dtgnet.teachers.cache import cut_token_grid


def test_a_finer_teacher_grid_is_averaged_over_each_student_patch():
    maps = torch.arange(32.0).view(2, 1, 4, 4)
    out = resample_grid(maps, (2, 2))
    # by hand: each student patch covers a 2x2 block of teacher cells
    assert out[0, 0].tolist() == [[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]]
    assert resample_grid(maps, (4, 4)) is maps


def test_a_coarser_teacher_grid_is_interpolated_bilinearly():
    maps = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])  # value = 4 col + 8 row at the cell centres
    out = resample_grid(maps, (4, 4))
    # by hand, half-pixel centres: student cell j sits at teacher coordinate (j + 0.5) / 2 - 0.5 = -0.25, 0.25,
    # 0.75, 1.25, clamped to [0, 1]: 0, 0.25, 0.75, 1
    coord = [0.0, 0.25, 0.75, 1.0]
    expected = [[4 * c + 8 * r for c in coord] for r in coord]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))


def test_a_cached_grid_is_cut_along_the_views_crop_box_and_flip():
    """By hand: channel 0 holds each cell's centre x, channel 1 its centre y, as fractions of the square (a
    linear ramp, so a cell of the cut grid reads the ramp at its own centre)."""
    s = 8
    centres = (torch.arange(s) + 0.5) / s
    maps = torch.stack([centres.expand(s, s), centres[:, None].expand(s, s)])[None]  # (1, 2, 8, 8)

    def cut(box, aspect=1.0, flipped=0.0):
        return cut_token_grid(maps, torch.tensor([[*box, aspect, flipped]]), (4, 4))[0]

    def ramp(lo, hi):  # the centres of 4 cells spanning [lo, hi]
        return lo + (torch.arange(4) + 0.5) * (hi - lo) / 4

    out = cut((0.25, 0.125, 0.75, 0.875))  # (y0, x0, y1, x1): an inner box
    torch.testing.assert_close(out[0], ramp(0.125, 0.875).expand(4, 4))
    torch.testing.assert_close(out[1], ramp(0.25, 0.75)[:, None].expand(4, 4))
    torch.testing.assert_close(cut((0.25, 0.125, 0.75, 0.875), flipped=1.0)[0], ramp(0.875, 0.125).expand(4, 4))
    # a frame twice as wide as high: the cache saw its centre square, x in [0.25, 0.75] of the frame
    torch.testing.assert_close(cut((0.25, 0.3125, 0.75, 0.6875), aspect=2.0)[0], ramp(0.125, 0.875).expand(4, 4))
    # past the square's side: clamped to it
    torch.testing.assert_close(cut((0.25, 0.0, 0.75, 0.25), aspect=2.0)[0], torch.zeros(4, 4) + centres[0])


def test_the_bundled_teacher_tokens_are_its_feature_map_and_pool_to_its_embedding():
    t = build_teacher(TeacherConfig("imagenet", "efficientnet_lite0", input_size=64))
    frames = torch.rand(3, 3, 64, 64)
    maps = t.token_maps(frames)
    assert maps.shape == (3, 1280, 2, 2) and t.token_dim == 1280
    torch.testing.assert_close(maps.mean((2, 3)), t.embed_frames(frames), rtol=1e-4, atol=1e-5)


def test_sequence_tokens_pair_each_tubelet_with_its_first_frame_in_the_students_order():
    """(B, T, 3, H, W) -> (B, T/tubelet * h * w, C): token n = (t', i, j) is the map of frame t' * tubelet at
    cell (i, j); a teacher whose token is its frame's pixel mean per cell shows where each comes from."""
    class CellMeans(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

        def tokens(self, x):  # (N, 3, 2, 2): each quarter's mean colour
            return torch.nn.functional.adaptive_avg_pool2d(x, 2)

    t = callable_teacher("cells", CellMeans(), 8, 3, mean=(0, 0, 0), std=(1, 1, 1))
    seq = torch.rand(2, 4, 3, 8, 8)
    tokens = t.sequence_tokens(seq, every=2, grid=(2, 2))
    assert tokens.shape == (2, 2 * 4, 3)
    for b in range(2):
        for tt in range(2):
            for i in range(2):
                for j in range(2):
                    cell = seq[b, 2 * tt, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((1, 2))
                    torch.testing.assert_close(tokens[b, tt * 4 + i * 2 + j], cell)


def test_torchvision_tokens_are_the_map_its_pool_reads(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cache / weights.url.rsplit("/", 1)[1])
    t = build_teacher(TeacherConfig("rn", "torchvision", "ResNet18_Weights.IMAGENET1K_V1", input_size=64))
    frames = torch.rand(2, 3, 64, 64)
    maps = t.token_maps(frames)
    e = t.encoder
    x = (frames - t.mean) / t.std
    with torch.no_grad():
        by_hand = e.layer4(e.layer3(e.layer2(e.layer1(e.maxpool(e.relu(e.bn1(e.conv1(x))))))))
    torch.testing.assert_close(maps, by_hand)
    assert "tokens" not in dict(e.named_modules())  # the parameter names (the cache's fingerprint) unchanged


def test_timm_vit_and_cnn_tokens():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False).eval()
    from dtgnet.teachers.hub import _TimmEncoder

    x = torch.randn(2, 3, 160, 160)
    grid = _TimmEncoder(vit, "default").tokens(x)
    with torch.no_grad():
        raw = vit.forward_features(x)[:, vit.num_prefix_tokens:]  # (N, h*w, D)
    side = int(raw.shape[1] ** 0.5)
    assert grid.shape == (2, raw.shape[2], side, side)
    torch.testing.assert_close(grid[:, :, 1, 2], raw[:, 1 * side + 2])
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    torch.testing.assert_close(_TimmEncoder(cnn, "default").tokens(x), cnn.forward_features(x))


def test_a_teacher_without_a_token_grid_says_so():
    t = callable_teacher("flat", lambda x: x.mean((2, 3)), 16, 3)
    with pytest.raises(ConfigError, match="teacher 'flat' gives no tokens"):
        t.token_maps(torch.rand(1, 3, 16, 16))
