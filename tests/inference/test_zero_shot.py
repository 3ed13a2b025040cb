"""Zero-shot `predict`: the student's head for a CLIP-family teacher against that teacher's text tower, checked
by a hand computation with tiny local open_clip and Hugging Face CLIP models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtgnet.cli import main
from dtgnet.config import to_dict
from dtgnet.students import build_student, save_student_safetensors
from tests.conftest import tiny_cfg
from tests.teachers.test_hub import hub  # noqa: F401  (the fixture: local CLIP models)

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
CLASSES = ["wave", "jump rope", "run fast"]


def clip_student(root, out, teacher: dict, dim: int):
    """A student with a head for one CLIP-family teacher (weights as initialised: the arithmetic is checked)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_cfg(root, out / "run", **{f"teachers.0.{k}": v for k, v in teacher.items()})
    torch.manual_seed(0)
    path = out / "clip_student.safetensors"
    save_student_safetensors(build_student(cfg, {teacher["name"]: dim}).eval(), path,
                             {"config": to_dict(cfg), "mode": "pretrain", "teacher_heads": {teacher["name"]: dim},
                              "num_classes": 0, "self_head": True})
    return path


def text_by_hand(kind: str, models) -> tuple[torch.Tensor, float]:
    prompts = [f"a video of a person {c}." for c in CLASSES]
    with torch.no_grad():
        if kind == "open_clip":
            model = open_clip.create_model("tiny-clip", pretrained=str(models / "tiny-clip.pt")).eval()
            return model.encode_text(open_clip.get_tokenizer("tiny-clip")(prompts)), float(model.logit_scale.exp())
        model = transformers.CLIPModel.from_pretrained(models / "hf-clip").eval()
        tokens = transformers.AutoTokenizer.from_pretrained(models / "hf-clip")(
            prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        text = text if torch.is_tensor(text) else text.pooler_output
        return text, float(model.logit_scale.exp())


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_zero_shot_probabilities_are_the_hand_computed_ones(kind, hub, colours, tmp_path, capsys):  # noqa: F811
    if kind == "open_clip":
        open_clip.add_model_config(str(hub / "tiny-clip.json"))
        teacher = {"name": "clip", "source": "open_clip", "model": str(hub / "tiny-clip.json"),
                   "weights": str(hub / "tiny-clip.pt")}
        dim = 32
    else:
        teacher = {"name": "clip", "source": "hf", "model": str(hub / "hf-clip")}
        dim = 24
    student = clip_student(colours, tmp_path, teacher, dim)
    videos = colours / "test.txt"
    common = ["--clips", "1", "--no-progress", "--workers", "0"]
    assert main(["predict", str(student), str(videos), "--zero-shot", "--classes", ",".join(CLASSES),
                 "--top-k", "3", *common]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["embed", str(student), str(videos), "--out", str(tmp_path / "emb"), "--heads", "clip",
                 "--dtype", "float32", *common]) == 0
    heads = torch.from_numpy(np.load(tmp_path / "emb" / "head.clip.npy"))  # (N, dim): h_k(f(clip))
    text, scale = text_by_hand(kind, hub)
    expected = (scale * F.normalize(heads, dim=1) @ F.normalize(text, dim=1).T).softmax(1)  # (N, C)
    assert len(records) == len(expected) == 6
    for r, p in zip(records, expected):
        got = {t["class"]: t["prob"] for t in r["top"]}
        assert [got[c] for c in CLASSES] == pytest.approx(p.tolist(), abs=2e-5)


def test_zero_shot_needs_a_clip_family_teacher_and_says_so(hub, colours, tmp_path, capsys):  # noqa: F811
    student = clip_student(colours, tmp_path, {"name": "imagenet", "source": "efficientnet_lite0"}, 16)
    assert main(["predict", str(student), str(colours / "test.txt"), "--zero-shot", "--classes", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no head for a CLIP-family teacher" in err[0] and "imagenet" in err[0]
    prompted = clip_student(colours, tmp_path / "p", {"name": "clip", "source": "hf", "model": str(hub / "hf-clip"),
                                                      "prompt": "a video of a person {}.",
                                                      "prompt_classes": "[wave,run]"}, 2)
    assert main(["predict", str(prompted), str(colours / "test.txt"), "--zero-shot", "--classes", "a,b"]) == 2
    assert "prompted (zero-shot action) teacher" in capsys.readouterr().err
    assert main(["predict", str(student), str(colours / "test.txt"), "--classes", "a,b"]) == 2
    assert "--classes and --teacher go with --zero-shot" in capsys.readouterr().err
