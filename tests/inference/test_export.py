"""`dtgnet export`: ONNX and torch.export files give PyTorch's outputs (on inputs they were not traced with),
and a student folder loads back to the same network and the same predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtgnet.cli import main
from dtgnet.config import to_dict
from dtgnet.inference.export import ExportedStudent, export_student
from dtgnet.students import build_student, load_student, save_student_safetensors
from tests.conftest import tiny_cfg

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_gives_pytorchs_outputs_at_other_batch_sizes(colour_student, tmp_path, capsys):
    path = tmp_path / "student.onnx"
    assert main(["export", str(colour_student), "--format", "onnx", "--out", str(path)]) == 0
    said = capsys.readouterr().out
    assert "max abs difference to PyTorch" in said and "dynamic axes: batch" in said
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features", "logits"]
    model = ExportedStudent(load_student(colour_student)).eval()
    x = torch.rand(5, 2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    features, logits = session.run(None, {"clips": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert np.abs(features - ref[0].numpy()).max() < 1e-4 and np.abs(logits - ref[1].numpy()).max() < 1e-4


def test_a_3d_student_with_teacher_heads_exports_to_onnx_with_a_dynamic_frame_axis(colours, tmp_path):
    cfg = tiny_cfg(colours, tmp_path / "run", **{"student.arch": "r3d_18", "data.frames": 4})
    model = build_student(cfg, {"imagenet": 16}).eval()
    ckpt = tmp_path / "r3d.safetensors"
    save_student_safetensors(model, ckpt, {"config": to_dict(cfg), "mode": "pretrain", "teacher_heads": {"imagenet": 16},
                                           "num_classes": 0, "self_head": True})
    for fmt in ("onnx", "pt2"):
        r = export_student(ckpt, fmt, tmp_path / f"s.{fmt}")
        assert r["dynamic"][0] == "batch" and r["max_abs_diff"] <= 1e-4
        assert r["outputs"] == ["features", "head.imagenet"]
        if fmt == "onnx":
            assert r["dynamic"] == ["batch", "frames"]
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 8, 3, 32, 32)  # twice the frames it was traced with
    with torch.no_grad():
        ref = ExportedStudent(load_student(ckpt)).eval()(x)
    for ours, theirs in zip(session.run(None, {"clips": x.numpy()}), ref):
        assert np.abs(ours - theirs.numpy()).max() < 1e-4
    loaded = torch.export.load(str(tmp_path / "s.pt2")).module()
    x = torch.rand(3, 4, 3, 32, 32)
    with torch.no_grad():
        ref = ExportedStudent(load_student(ckpt)).eval()(x)
    assert torch.allclose(loaded(x)[1], ref[1], atol=1e-5)


def test_the_folder_is_self_describing_and_predicts_the_same(colours, colour_student, tmp_path, capsys):
    folder = tmp_path / "exported"
    assert main(["export", str(colour_student), "--format", "folder", "--out", str(folder)]) == 0
    desc = json.loads((folder / "config.json").read_text())
    assert desc["arch"] == "tsn_r18" and desc["frames"] == 2 and desc["size"] == 32 and desc["temporal"] == "segments"
    assert desc["classes"] == ["red", "blue"] and desc["num_classes"] == 2 and len(desc["mean"]) == 3
    assert "dtgnet predict exported" in (folder / "README.md").read_text()
    a, b = load_student(colour_student), load_student(folder)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    capsys.readouterr()
    outputs = []
    for source in (colour_student, folder):
        assert main(["predict", str(source), str(colours / "test.txt"), "--no-progress", "--workers", "0"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_refusals_are_one_line(colour_student, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "none.pt: no such checkpoint" in capsys.readouterr().err
    # a file that disagrees with PyTorch beyond the tolerance is removed, not reported as a success
    assert main(["export", str(colour_student), "--format", "pt2", "--out", str(tmp_path / "x.pt2"),
                 "--tolerance", "-1"]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "the file was removed" in err and not (tmp_path / "x.pt2").exists()
