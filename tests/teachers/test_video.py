"""Video teachers: a dtgnet student, a torchvision video model and a Hugging Face VideoMAE, each built offline
from weights the test writes, compared with the library's own forward pass; and a run co-taught by a video
and an image teacher."""
import json

import pytest
import torch
import torch.nn.functional as F

from dtgnet.config import TeacherConfig, validate
from dtgnet.errors import ConfigError
from dtgnet.io import IMAGENET_MEAN, IMAGENET_STD
from dtgnet.students import read_student
from dtgnet.teachers import build_teacher
from dtgnet.teachers.cache import cache_teachers
from dtgnet.teachers.video import VideoTeacher
from dtgnet.training import train
from dtgnet.training.loop import Trainer
from tests.conftest import tiny_cfg

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def pretrained(tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("video_teacher") / "pre"
    train(tiny_cfg(tiny_synth, out), "pretrain", progress=False)
    return out / "student.safetensors"


def test_student_teacher_is_the_students_backbone(pretrained):
    teacher = build_teacher(TeacherConfig("video", "student", str(pretrained)))
    model, meta = read_student(pretrained)
    assert isinstance(teacher, VideoTeacher) and teacher.input_size == meta["config"]["data"]["size"] == 32
    views = torch.rand(3, 5, 3, 48, 48)  # another size and frame count than the student's: resized, resampled
    assert teacher.frames == meta["config"]["data"]["frames"] == 2
    expected = model.backbone(F.interpolate(views[:, [0, 4]].flatten(0, 1), size=(32, 32), mode="bilinear",
                                            align_corners=False, antialias=True).unflatten(0, (3, 2)))
    torch.testing.assert_close(teacher(views), expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="whole clips"):
        teacher.per_frame(views)


def with_video_teacher(cfg, pretrained, **settings):
    cfg.teachers.append(TeacherConfig("video", "student", str(pretrained)))
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    validate(cfg)
    return cfg


def test_a_video_and_an_image_teacher_co_teach(tiny_synth, pretrained, tmp_path):
    cfg = with_video_teacher(tiny_cfg(tiny_synth, tmp_path / "co", **{"loss.weighting": "adaptive"}), pretrained)
    metrics = train(cfg, "pretrain", progress=False)
    assert set(metrics["teacher_weights"]) == {"imagenet", "video"}
    logged = [json.loads(line) for line in (tmp_path / "co" / "log.jsonl").read_text().splitlines()]
    assert any("teacher/video" in r and r["teacher/video"] > 0 for r in logged)


def test_a_video_teacher_runs_online_beside_the_image_teachers_cache(tiny_synth, pretrained, tmp_path):
    cfg = with_video_teacher(tiny_cfg(tiny_synth, tmp_path / "mixed"), pretrained, **{"run.teacher_cache": True})
    trainer = Trainer(cfg, "pretrain", progress=False)
    image, video = trainer.caches
    assert image is not None and video is None
    batch = trainer.to_batch(next(iter(trainer.loader(0))))
    with torch.no_grad():
        emb = trainer.teacher_embeddings(batch)
        torch.testing.assert_close(emb.a[0], image.lookup(batch.index, batch.frames_a))  # the cache's rows
        torch.testing.assert_close(emb.b[1], trainer.teachers[1](batch.b))  # the video model on the view itself
    trainer.close()


def test_video_teachers_have_no_per_frame_cache_and_no_segments(tiny_synth, pretrained, tmp_path):
    with pytest.raises(ConfigError, match="loss.segment_weight"):
        with_video_teacher(tiny_cfg(tiny_synth, tmp_path / "x"), pretrained, **{"loss.segment_weight": 1.0})
    with pytest.raises(ConfigError, match="every teacher is a video teacher") as e:
        cache_teachers([TeacherConfig("video", "student", str(pretrained))], None, 2, 32, tmp_path / "c", "cpu", None)
    assert e.value.key == "teachers"
    with pytest.raises(ConfigError, match="teachers.1.weights"):
        with_video_teacher(tiny_cfg(tiny_synth, tmp_path / "x"), tmp_path / "missing.safetensors")


@pytest.mark.parametrize("weights,builder", [("R3D_18_Weights.KINETICS400_V1", "r3d_18"),
                                             ("S3D_Weights.KINETICS400_V1", "s3d")])
def test_torchvision_video_teacher_from_the_local_hub_cache(tmp_path, monkeypatch, weights, builder):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = tvm.get_weight(weights)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    reference = tvm.get_model(builder).eval()
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / w.url.rsplit("/", 1)[1])
    teacher = build_teacher(TeacherConfig("k400", "torchvision_video", weights, input_size=112 if builder == "r3d_18"
                                          else 224))
    views = torch.rand(2, 8 if builder == "r3d_18" else 16, 3, teacher.input_size, teacher.input_size)
    x = (views.transpose(1, 2) - torch.tensor(w.transforms().mean).view(1, 3, 1, 1, 1)) / torch.tensor(
        w.transforms().std).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        if builder == "r3d_18":
            reference.fc = torch.nn.Identity()
            expected = reference(x)
        else:  # S3D's classifier is a 1x1x1 convolution after pooling: its input, pooled
            expected = reference.avgpool(reference.features(x)).mean((2, 3, 4))
    assert teacher.embed_dim == expected.shape[1]
    torch.testing.assert_close(teacher(views), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="not a torchvision video model"):
        build_teacher(TeacherConfig("x", "torchvision_video", "ResNet18_Weights.IMAGENET1K_V1"))


def test_videomae_teacher_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    reference = transformers.VideoMAEModel(config).eval()
    reference.save_pretrained(tmp_path / "videomae")
    teacher = build_teacher(TeacherConfig("mae", "hf_video", model=str(tmp_path / "videomae")))
    assert (teacher.input_size, teacher.frames, teacher.embed_dim) == (32, 4, 32)
    views = torch.rand(2, 8, 3, 32, 32)  # 8 frames: every other one, evenly
    x = (views[:, [0, 2, 5, 7]] - MEAN.transpose(1, 2)) / STD.transpose(1, 2)  # (B, T, 3, S, S) normalised
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state.mean(1)
    torch.testing.assert_close(teacher(views), expected, rtol=1e-4, atol=1e-5)
