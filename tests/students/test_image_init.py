"""student.init_from for the CNN students and TSN over any 2D network: weights from files the tests write or the
bundled teacher's, compared with the image network's own forward pass."""
import pytest
import torch
import torchvision

from dtgnet.config import Config, TeacherConfig, load_config
from dtgnet.errors import CheckpointError, ConfigError
from dtgnet.students import build_student, initialise_backbone
from dtgnet.teachers import build_teacher


def student(arch: str, frames: int = 2, size: int = 64, **settings):
    cfg = Config()
    cfg.student.arch, cfg.data.frames, cfg.data.size = arch, frames, size
    for k, v in settings.items():
        setattr(cfg.student, k, v)
    return build_student(cfg, {}), cfg


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("r18") / "resnet18.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_tsn_starts_from_a_2d_resnet(resnet18_file):
    """TSN-R18 from a torchvision ResNet-18 file: each frame's feature is the image network's."""
    net, path = resnet18_file
    model, cfg = student("tsn_r18", temporal_shift=False, init_from=str(path))
    initialise_backbone(model, cfg)
    model.eval()
    frames = torch.rand(2, 2, 3, 64, 64)
    net.fc = torch.nn.Identity()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((frames.flatten(0, 1) - mean) / std).unflatten(0, (2, 2))
        torch.testing.assert_close(model.backbone.per_segment(frames), expected, rtol=1e-4, atol=1e-5)
    tsm, cfg = student("tsn_r18", temporal_shift=True, init_from=str(path))  # the shift wraps conv1: same weights
    initialise_backbone(tsm, cfg)
    torch.testing.assert_close(tsm.backbone.net.layer2[1].conv1.conv.weight, net.layer2[1].conv1.weight)


def test_r3d_inflates_a_2d_resnet(resnet18_file):
    """I3D inflation: each 3D kernel summed over time is the 2D kernel; batch norm is copied."""
    net, path = resnet18_file
    model, cfg = student("r3d_18", frames=4, init_from=str(path))
    initialise_backbone(model, cfg)
    r3d = model.backbone.net
    torch.testing.assert_close(r3d.stem[0].weight.sum(2), net.conv1.weight)
    torch.testing.assert_close(r3d.layer3[0].conv2[0].weight.sum(2), net.layer3[0].conv2.weight)
    torch.testing.assert_close(r3d.layer4[0].downsample[1].running_var, net.layer4[0].downsample[1].running_var)


def test_tsn_over_the_bundled_network_starts_as_the_teacher():
    """tsn + efficientnet_lite0 + init_from=bundled: before training, the student's feature of a video is the
    bundled ImageNet teacher's embedding of the same frames."""
    model, cfg = student("tsn", frames=3, size=96, backbone="efficientnet_lite0", init_from="bundled",
                         temporal_shift=False)
    initialise_backbone(model, cfg)
    model.eval()
    teacher = build_teacher(TeacherConfig("imagenet", "efficientnet_lite0", input_size=96))
    video = torch.rand(2, 3, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(video), teacher(video), rtol=1e-4, atol=1e-4)
        assert model.backbone.tokens(video).shape == (2, 3 * 3 * 3, 1280)


def test_tsn_over_a_timm_network(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=0).eval()
    torch.save(net.state_dict(), tmp_path / "timm_r18.pt")
    model, cfg = student("tsn", backbone="resnet18", init_from=str(tmp_path / "timm_r18.pt"), temporal_shift=False)
    initialise_backbone(model, cfg)
    model.eval()
    video = torch.rand(1, 2, 3, 64, 64)
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(video), net((video[0] - mean) / std).mean(0, keepdim=True),
                                   rtol=1e-4, atol=1e-5)


def test_what_cannot_start_from_an_image_model(resnet18_file, tmp_path):
    _, path = resnet18_file
    for arch in ("r2plus1d_18", "s3d", "mvit_v2_s"):
        with pytest.raises(ConfigError, match=f"student.init_from.*{arch} cannot"):
            load_config(None, [f"student.arch={arch}", f"student.init_from={path}"], check_paths=False)
    with pytest.raises(ConfigError, match="student.backbone"):
        load_config(None, ["student.arch=tsn", "student.temporal_shift=false"], check_paths=False)
    with pytest.raises(ConfigError, match="student.temporal_shift"):
        load_config(None, ["student.arch=tsn", "student.backbone=efficientnet_lite0", "student.temporal_shift=true"],
                    check_paths=False)
    with pytest.raises(ConfigError, match="student.backbone"):
        load_config(None, ["student.arch=tsn_r18", "student.backbone=resnet18"], check_paths=False)
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pt")  # another network: refused
    model, cfg = student("tsn_r18", init_from=str(tmp_path / "r34.pt"))
    with pytest.raises(CheckpointError, match="r34.pt: not the student's 2D network"):
        initialise_backbone(model, cfg)
