import pytest
import torch

from dtgnet.students import DTGStudent
from dtgnet.students.tsn import TemporalShift


@pytest.mark.parametrize("arch, frames, size, dim", [
    ("tsn_r18", 3, 32, 512), ("r3d_18", 4, 32, 512), ("r2plus1d_18", 4, 32, 512), ("s3d", 8, 112, 1024),
    ("mvit_v2_s", 4, 64, 768), ("swin3d_t", 4, 32, 768), ("vit_t", 4, 32, 192), ("vit_s", 2, 32, 384),
    ("vit_b", 2, 32, 768)])
def test_students_forward_and_heads(arch, frames, size, dim):
    m = DTGStudent(arch, frames, {"imagenet": 1280, "action": 256}, proj_dim=16, proj_hidden=32, num_classes=5,
                   size=size, patch_size=8)
    x = torch.rand(2, frames, 3, size, size)
    with torch.no_grad():
        f = m(x)
        assert f.shape == (2, dim)
        assert m.teacher_heads["imagenet"](f).shape == (2, 1280)
        assert m.teacher_heads["action"](f).shape == (2, 256)
        assert m.self_head(f).shape == (2, 16) and m.classifier(f).shape == (2, 5)


def test_temporal_shift_makes_tsn_order_aware():
    torch.manual_seed(0)
    x = torch.rand(1, 4, 3, 32, 32)
    plain = DTGStudent("tsn_r18", 4, {}).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain(x.flip(1)))  # average consensus: order-blind
        tsm = DTGStudent("tsn_r18", 4, {}, temporal_shift=True).eval()
        assert not torch.allclose(tsm(x), tsm(x.flip(1)), atol=1e-4)


def test_temporal_shift_moves_channels():
    shift = TemporalShift(torch.nn.Identity(), segments=3, fold_div=4)
    x = torch.arange(3 * 8, dtype=torch.float).view(3, 8, 1, 1)  # (T=3, C=8)
    y = shift(x).view(3, 8)
    assert y[0, :2].tolist() == x.view(3, 8)[1, :2].tolist()  # first fold from the future
    assert y[1, 2:4].tolist() == x.view(3, 8)[0, 2:4].tolist()  # second fold from the past
    assert y[2, :2].tolist() == [0, 0]
