"""The video ViT student: attention, order awareness, input checks, inflation from an image ViT."""
import pytest
import torch

from dtgnet.config import load_config
from dtgnet.errors import CheckpointError, ConfigError
from dtgnet.students import DTGStudent, build_student, initialise_backbone
from dtgnet.students.vit import VideoViT, draw_visible, visible_count


def test_vit_attention_matches_a_naive_softmax_loop():
    torch.manual_seed(0)
    vit = VideoViT("vit_t", 2, 16, patch=8, tubelet=1)
    attn = vit.blocks[0].attn
    x = torch.randn(2, 5, 192)
    q, k, v = attn.qkv(x).view(2, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)  # 3x (B, heads, N, 64)
    out = torch.zeros(2, 3, 5, 64)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                w = torch.softmax(torch.stack([q[b, h, i] @ k[b, h, j] / 8.0 for j in range(5)]), 0)
                out[b, h, i] = sum(w[j] * v[b, h, j] for j in range(5))
    torch.testing.assert_close(attn(x), attn.proj(out.transpose(1, 2).reshape(2, 5, 192)))


def test_vit_student_is_order_aware_and_checks_its_input():
    torch.manual_seed(0)
    m = DTGStudent("vit_t", 4, {}, size=32, patch_size=8).eval()
    x = torch.rand(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x.flip(1)), atol=1e-4)  # time embedding + tubelets see direction
    with pytest.raises(ValueError, match="tokens"):
        m(torch.rand(1, 4, 3, 48, 48))
    with pytest.raises(ConfigError, match="student.patch_size"):
        load_config(None, ["student.arch=vit_s", "data.size=40"], check_paths=False)
    with pytest.raises(ConfigError, match="student.tubelet"):
        load_config(None, ["student.arch=vit_s", "data.frames=3", "data.size=32"], check_paths=False)
    with pytest.raises(ConfigError, match="student.init_from"):
        load_config(None, ["student.arch=s3d", "student.init_from=x.safetensors"], check_paths=False)


def test_vit_inflated_from_an_image_vit_sees_a_still_video_as_the_image(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    image = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", class_token=False,
                              img_size=32, patch_size=16, num_classes=0).eval()
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in image.state_dict().items()}, str(path))
    cfg = load_config(None, ["student.arch=vit_t", "student.patch_size=16", "data.size=32", "data.frames=2",
                             f"student.init_from={path}"], check_paths=False)
    model = build_student(cfg, {})
    initialise_backbone(model, cfg)
    frame = torch.rand(1, 3, 32, 32)
    still = frame[:, None].repeat(1, 2, 1, 1, 1)  # (1, T=2, 3, 32, 32): one tubelet per patch
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    with torch.no_grad():  # timm: blocks, mean over patch tokens, fc_norm
        expected = image.forward_head(image.forward_features((frame - mean) / std), pre_logits=True)
        torch.testing.assert_close(model.eval()(still), expected, atol=1e-4, rtol=1e-4)
    scaled = tmp_path / "layer_scale.safetensors"
    save_file({**image.state_dict(), "blocks.0.ls1.gamma": torch.ones(192)}, str(scaled))
    cfg.student.init_from = str(scaled)
    with pytest.raises(CheckpointError, match="blocks.0.ls1.gamma"):
        initialise_backbone(build_student(cfg, {}), cfg)
    wrong = tmp_path / "other.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, str(wrong))
    cfg.student.init_from = str(wrong)
    with pytest.raises(CheckpointError, match="other.safetensors: not a timm ViT of width 192"):
        initialise_backbone(build_student(cfg, {}), cfg)


def test_activation_checkpointing_gives_the_same_gradients():
    """student.checkpointing: the blocks recompute their activations in backward; outputs and gradients are
    those of the plain model (fp64), and no block output is kept for backward."""
    import copy

    torch.manual_seed(0)
    plain = VideoViT("vit_t", frames=4, size=32, patch=8, tubelet=2).double()
    recomputing = copy.deepcopy(plain)
    recomputing.checkpointing = True
    x = torch.rand(2, 4, 3, 32, 32, dtype=torch.float64)
    for model in (plain, recomputing):
        model(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), recomputing.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    saved = {}
    for name, model in (("plain", plain), ("recomputing", recomputing)):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.setdefault(name, []).append(t.numel()) or t,
                                                      lambda t: t):
            model(x).sum()
    assert sum(saved["recomputing"]) < sum(saved["plain"]) / 4


def test_checkpointing_needs_a_vit_student():
    with pytest.raises(ConfigError, match="student.checkpointing"):
        load_config(None, ["student.arch=tsn_r18", "student.checkpointing=true"], check_paths=False)


@pytest.mark.parametrize("kind, ratio", [("tube", 0.75), ("tube", 0.5), ("random", 0.75), ("random", 0.9)])
def test_masking_keeps_exactly_the_stated_share(kind, ratio):
    grid = (4, 4, 4)  # 64 tokens, 16 per tubelet time
    torch.manual_seed(0)
    visible = draw_visible(5, grid, ratio, kind)
    count = 16 - round(ratio * 16) if kind == "tube" else 64 - round(ratio * 64)
    assert visible.shape == (5, count * 4 if kind == "tube" else count) == (5, visible_count(grid, ratio, kind))
    for row in visible:
        assert row.unique().numel() == row.numel() and row.min() >= 0 and row.max() < 64
        assert torch.equal(row, row.sort().values)
        if kind == "tube":  # the same patches at every time
            per_time = row.view(4, -1)
            assert all(torch.equal(per_time[t] - 16 * t, per_time[0]) for t in range(4))
    assert not torch.equal(visible[0], visible[1])  # each video its own mask


def test_the_encoder_never_sees_the_masked_tubelets():
    """Changing the pixels of every masked tubelet changes nothing the masked encoding gives, and no gradient
    reaches them."""
    torch.manual_seed(0)
    vit = VideoViT("vit_t", 4, 32, patch=8, tubelet=2).eval()
    visible = draw_visible(2, vit.grid, 0.75, "tube")  # (2, 2 * 4)
    x = torch.rand(2, 4, 3, 32, 32, requires_grad=True)
    out = vit.masked(x, visible)
    assert out.shape == (2, 1 + visible.shape[1], 192)
    seen = torch.zeros(2, 2 * 4 * 4, dtype=torch.bool)
    seen[torch.arange(2)[:, None], visible] = True
    # a pixel's tubelet: (time // 2, row // 8, col // 8) in the student's token order
    pixel_seen = seen.view(2, 2, 1, 4, 1, 4, 1).expand(2, 2, 2, 4, 8, 4, 8).reshape(2, 4, 1, 32, 32)
    out.sum().backward()
    assert x.grad.abs()[~pixel_seen.expand_as(x)].sum() == 0
    assert x.grad.abs()[pixel_seen.expand_as(x)].sum() > 0
    changed = torch.where(pixel_seen, x.detach(), torch.rand_like(x.detach()))
    with torch.no_grad():
        torch.testing.assert_close(vit.masked(changed, visible), out.detach())
        everything = torch.arange(32).expand(2, -1)
        unmasked = vit.masked(x.detach(), everything)
        torch.testing.assert_close(unmasked[:, 0], vit(x.detach()))  # all visible: the plain pooled feature
        torch.testing.assert_close(unmasked[:, 1:], vit.tokens(x.detach()))


def test_masking_and_token_distillation_config_errors(tmp_path):
    base = ["data.root=/x", "data.frames=4", "data.size=32"]
    vit = ["student.arch=vit_t", "student.patch_size=8"]
    for overrides, key in [
        (["student.mask_ratio=0.5"], "student.mask_ratio"),  # tsn_r18: not made of tokens
        (["loss.token_weight=1"], "loss.token_weight"),
        ([*vit, "student.mask_ratio=0.95"], "student.mask_ratio"),
        ([*vit, "student.mask_type=block"], "student.mask_type"),
        ([*vit, "loss.token_weight=1", "loss.token_form=l1"], "loss.token_form"),
        ([*vit, "loss.clip_weight=0"], "loss.clip_weight"),
        ([*vit, "run.teacher_cache=true", "run.token_cache_grid=4"], "run.token_cache_grid"),  # no token term
        ([*vit, "loss.token_weight=1", "run.token_cache_grid=4"], "run.token_cache_grid"),  # no teacher cache
        ([*vit, "loss.token_weight=1", "run.teacher_cache=true", "run.token_cache_grid=33"], "run.token_cache_grid"),
        ([*vit, "loss.token_weight=1", "teachers.0.source=torchvision_video",
          "teachers.0.weights=R3D_18_Weights.KINETICS400_V1"], "loss.token_weight")]:
        with pytest.raises(ConfigError) as e:
            load_config(None, base + overrides, check_paths=False)
        assert e.value.key == key, (overrides, e.value)
    tiny = ["data.size=16", "data.frames=2", "student.patch_size=16", "student.tubelet=2"]  # one token
    with pytest.raises(ConfigError, match="leaves no token"):
        load_config(None, ["data.root=/x", "student.arch=vit_t", *tiny, "student.mask_ratio=0.6"], check_paths=False)
