"""timm, open_clip and Hugging Face teachers, built offline from small random-weight models saved to local files
and directories, loaded back through the config and compared with the library's own forward pass."""
import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from dtgnet.config import TeacherConfig
from dtgnet.errors import CheckpointError, ConfigError
from dtgnet.teachers import build_teacher
from dtgnet.teachers.hub import _class_phrase

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

CLASSES = ["Wave", "JumpRope", "run_fast"]
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                             "head_width": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _save_tokenizer(directory):
    """A word-level fast tokenizer (no vocabulary download) saved beside a tiny CLIP."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[EOS]", "a", "video", "of", "person", "wave", "jump", "rope", "run", "fast", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[PAD]").save_pretrained(
        directory)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Local weights of every kind: a timm ViT (safetensors), an open_clip model config and checkpoint, a
    transformers CLIP (with processor and tokenizer) and a DINOv2 without a processor file."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(d / "test_vit.safetensors"))
    (d / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(d / "tiny-clip.json"))
    oc = open_clip.create_model("tiny-clip")
    torch.save({"state_dict": {f"module.{k}": v for k, v in oc.state_dict().items()}}, d / "tiny-clip.pt")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=12,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    clip.save_pretrained(d / "hf-clip")
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                                    ).save_pretrained(d / "hf-clip")
    _save_tokenizer(d / "hf-clip")
    dino = transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, intermediate_size=64, image_size=32,
                                                              num_hidden_layers=2, num_attention_heads=2,
                                                              patch_size=8))
    dino.save_pretrained(d / "hf-dinov2")
    siglip = transformers.SiglipModel(transformers.SiglipConfig(
        text_config={**text, "max_position_embeddings": 16}, vision_config=vision))
    siglip.save_pretrained(d / "hf-siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d / "hf-siglip")
    _save_tokenizer(d / "hf-siglip")
    return d


def normalised(teacher, frames):
    return (frames - teacher.mean) / teacher.std


def test_timm_teacher_uses_the_model_config_and_matches_timm(hub):
    t = build_teacher(TeacherConfig(name="vit", source="timm", model="test_vit",
                                    weights=str(hub / "test_vit.safetensors")))
    from safetensors.torch import load_file

    ref = timm.create_model("test_vit", pretrained=False)
    ref.load_state_dict(load_file(str(hub / "test_vit.safetensors")))
    ref.reset_classifier(0)
    ref.eval()
    data = timm.data.resolve_model_data_config(ref)
    assert t.input_size == data["input_size"][-1] == 160 and t.mean.flatten().tolist() == list(data["mean"])
    frames = torch.rand(3, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(t.embed_frames(frames), ref(normalised(t, frames)))
    assert t.embed_dim == ref.num_features
    tokens = build_teacher(TeacherConfig(name="p", source="timm", model="test_vit", input_size=64,
                                         weights=str(hub / "test_vit.safetensors"), embedding="mean_patch"))
    assert tokens.input_size == 64 and tokens.embed_frames(torch.rand(2, 3, 64, 64)).shape == (2, ref.num_features)


def test_timm_teacher_loads_a_checkpoint_fine_tuned_on_other_classes(tmp_path):
    from safetensors.torch import save_file

    tuned = timm.create_model("test_vit", pretrained=False, num_classes=7)
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, str(tmp_path / "tuned.safetensors"))
    t = build_teacher(TeacherConfig(name="t", source="timm", model="test_vit", input_size=32,
                                    weights=str(tmp_path / "tuned.safetensors")))
    tuned.reset_classifier(0)
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t.embed_frames(frames), tuned.eval()(normalised(t, frames)))


def test_timm_teacher_errors_name_the_file_or_key(hub, tmp_path):
    with pytest.raises(ConfigError, match="teachers.model"):
        build_teacher(TeacherConfig(name="x", source="timm", model="no_such_model_xyz",
                                    weights=str(hub / "test_vit.safetensors")))
    with pytest.raises(CheckpointError, match="test_vit.safetensors: weights do not match timm test_resnet"):
        build_teacher(TeacherConfig(name="x", source="timm", model="test_resnet",
                                    weights=str(hub / "test_vit.safetensors")))
    with pytest.raises(ConfigError, match="teachers.embedding"):
        build_teacher(TeacherConfig(name="x", source="timm", model="test_vit", embedding="projected",
                                    weights=str(hub / "test_vit.safetensors")))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(CheckpointError, match="weights_only") as refused:
        build_teacher(TeacherConfig(name="x", source="timm", model="test_vit", weights=str(tmp_path / "evil.pt")))
    assert str(refused.value).startswith(f"{tmp_path / 'evil.pt'}: ")  # the message names the file
    assert not marker.exists()


def test_open_clip_teacher_gives_the_projected_embedding(hub):
    t = build_teacher(TeacherConfig(name="clip", source="open_clip", model=str(hub / "tiny-clip.json"),
                                    weights=str(hub / "tiny-clip.pt")))
    ref = open_clip.create_model("tiny-clip", pretrained=str(hub / "tiny-clip.pt")).eval()
    assert t.input_size == 32 and t.embed_dim == 32
    assert t.mean.flatten().tolist() == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    frames = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t.embed_frames(frames), ref.encode_image(normalised(t, frames)))
        ref.visual.output_tokens = True
        patches = ref.visual(normalised(t, frames))[1]  # (N, 16, width 64): the tower's patch tokens
    torch.testing.assert_close(t.token_maps(frames), patches.transpose(1, 2).unflatten(2, (4, 4)))
    assert t.token_dim == 64 and not t.encoder.model.visual.output_tokens  # the embedding path is left as it was
    with pytest.raises(ConfigError, match="teachers.model"):
        build_teacher(TeacherConfig(name="x", source="open_clip", model="No-Such-Model"))
    broken = hub / "broken-clip.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken-clip.json: not an open_clip model config"):
        build_teacher(TeacherConfig(name="x", source="open_clip", model=str(broken)))


def test_prompted_open_clip_teacher_is_a_zero_shot_action_classifier(hub):
    cfg = TeacherConfig(name="zs", source="open_clip", model=str(hub / "tiny-clip.json"),
                        weights=str(hub / "tiny-clip.pt"), prompt="a video of a person {}.")
    t = build_teacher(cfg, CLASSES)
    assert t.embed_dim == len(CLASSES)
    ref = open_clip.create_model("tiny-clip", pretrained=str(hub / "tiny-clip.pt")).eval()
    tok = open_clip.get_tokenizer("tiny-clip")
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        text = F.normalize(ref.encode_text(tok([f"a video of a person {p}." for p in
                                                 ("wave", "jump rope", "run fast")])), dim=-1)
        img = F.normalize(ref.encode_image(normalised(t, frames)), dim=-1)
        logits = ref.logit_scale.exp() * img @ text.T  # (N, C)
        expected = logits - logits.mean(1, keepdim=True)
        got = t.embed_frames(frames)
    torch.testing.assert_close(got, expected)
    # the logits rank classes as a zero-shot classifier would
    assert torch.equal(got.argmax(1), logits.argmax(1))
    with pytest.raises(ConfigError, match="prompt_classes"):
        build_teacher(cfg, None)
    own = build_teacher(TeacherConfig(name="zs", source="open_clip", model=str(hub / "tiny-clip.json"),
                                      weights=str(hub / "tiny-clip.pt"), prompt="{}", prompt_classes=["a", "b"]))
    assert own.embed_dim == 2


def test_class_phrases():
    assert [_class_phrase(c) for c in ("ApplyEyeMakeup", "jump_rope", "YoYo", "playing-cello")] == [
        "apply eye makeup", "jump rope", "yo yo", "playing cello"]


def test_hf_clip_teacher_projected_pooled_and_prompted(hub):
    source = str(hub / "hf-clip")
    ref = transformers.CLIPModel.from_pretrained(source).eval()
    t = build_teacher(TeacherConfig(name="clip", source="hf", model=source))
    assert t.input_size == 32 and t.embed_dim == 24  # the projection's width
    frames = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=normalised(t, frames))
        out = out if torch.is_tensor(out) else out.pooler_output
        torch.testing.assert_close(t.embed_frames(frames), out)
        pooled = build_teacher(TeacherConfig(name="p", source="hf", model=source, embedding="pooled"))
        torch.testing.assert_close(pooled.embed_frames(frames),
                                   ref.vision_model(pixel_values=normalised(t, frames)).pooler_output)



def hf_zero_shot_by_hand(model, source: str, teacher, frames) -> torch.Tensor:
    """CLIP's zero-shot recipe from the model's own text and image features: centred class logits."""
    tokens = transformers.AutoTokenizer.from_pretrained(source)(
        [f"a video of a person {c}." for c in ("wave", "jump rope", "run fast")], padding="max_length",
        max_length=16, truncation=True, return_tensors="pt")
    text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image = model.get_image_features(pixel_values=normalised(teacher, frames))
    text, image = (x if torch.is_tensor(x) else x.pooler_output for x in (text, image))
    logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # (N, C)
    return logits - logits.mean(1, keepdim=True)


@pytest.mark.parametrize("name, family", [("hf-clip", "CLIPModel"), ("hf-siglip", "SiglipModel")])
def test_prompted_hf_teacher_is_a_zero_shot_action_classifier(hub, name, family):
    source = str(hub / name)
    model = getattr(transformers, family).from_pretrained(source).eval()
    zs = build_teacher(TeacherConfig(name="zs", source="hf", model=source, prompt="a video of a person {}."), CLASSES)
    assert zs.embed_dim == 3
    frames = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(zs.embed_frames(frames), hf_zero_shot_by_hand(model, source, zs, frames))


def test_hf_siglip_teacher_gives_its_pooled_projection(hub):
    source = str(hub / "hf-siglip")
    ref = transformers.SiglipModel.from_pretrained(source).eval()
    t = build_teacher(TeacherConfig(name="siglip", source="hf", model=source))
    assert t.input_size == 32 and t.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=normalised(t, frames))
        out = out if torch.is_tensor(out) else out.pooler_output
        torch.testing.assert_close(t.embed_frames(frames), out)


def test_hf_dinov2_teacher_cls_or_mean_patch(hub):
    source = str(hub / "hf-dinov2")
    ref = transformers.Dinov2Model.from_pretrained(source).eval()
    cls = build_teacher(TeacherConfig(name="d", source="hf", model=source, input_size=32))
    # no processor file: DINOv2's processor defaults (224 crop) with ImageNet normalisation
    assert build_teacher(TeacherConfig(name="d", source="hf", model=source)).input_size == 224
    assert cls.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    mean = build_teacher(TeacherConfig(name="m", source="hf", model=source, input_size=32, embedding="mean_patch"))
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = ref(pixel_values=normalised(cls, frames)).last_hidden_state  # (N, 1 + 16, 32)
        torch.testing.assert_close(cls.embed_frames(frames), tokens[:, 0])
        torch.testing.assert_close(mean.embed_frames(frames), tokens[:, 1:].mean(1))
        # token distillation: the patch tokens on their 4x4 grid, the class token dropped
        torch.testing.assert_close(cls.token_maps(frames), tokens[:, 1:].transpose(1, 2).unflatten(2, (4, 4)))
    with pytest.raises(ConfigError, match="no image projection"):
        build_teacher(TeacherConfig(name="x", source="hf", model=source, embedding="projected"))
    with pytest.raises(ConfigError, match="no text tower"):
        build_teacher(TeacherConfig(name="x", source="hf", model=source, prompt="{}"), CLASSES)


def test_hf_remote_code_is_refused_unless_trusted(tmp_path):
    repo = tmp_path / "remote"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "evil-net", "auto_map": {
        "AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}}))
    marker = tmp_path / "pwned"
    (repo / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(ConfigError, match="trust_remote_code"):
        build_teacher(TeacherConfig(name="x", source="hf", model=str(repo)))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no_such_dir"):
        build_teacher(TeacherConfig(name="x", source="hf", model=str(tmp_path / "no_such_dir")))


def test_bf16_precision_runs_under_autocast(hub):
    cfg = TeacherConfig(name="vit", source="timm", model="test_vit", weights=str(hub / "test_vit.safetensors"),
                        input_size=32)
    fp32, bf16 = build_teacher(cfg), build_teacher(TeacherConfig(**{**cfg.__dict__, "precision": "bf16"}))
    frames = torch.rand(2, 3, 32, 32)
    a, b = fp32.embed_frames(frames), bf16.embed_frames(frames)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)


def test_shipped_config_pretrains_a_vit_with_timm_open_clip_and_hf_teachers(hub, tiny_synth, tmp_path, capsys):
    """configs/synth_vit_hub.yaml through the README's commands, with this module's tiny local models in place
    of the real ones: teacher cache to disk, then pre-training from it."""
    from pathlib import Path

    from dtgnet.cli import main
    from dtgnet.training.runlog import read_log

    config = Path(__file__).parents[2] / "configs" / "synth_vit_hub.yaml"
    data = {f"data.{k}": f"{tiny_synth}/{k.split('_')[0]}.txt" for k in ("train_list", "val_list", "test_list")}
    overrides = [f"{k}={v}" for k, v in {
        "data.root": tiny_synth, **data, "data.classes": f"{tiny_synth}/classes.txt", "data.size": 32,
        "data.frames": 2, "student.arch": "vit_t", "student.patch_size": 8, "optim.batch_size": 4,
        "optim.max_steps": 2, "run.out": tmp_path / "run", "run.teacher_cache_dir": tmp_path / "cache",
        "teachers.0.model": "test_vit", "teachers.0.weights": hub / "test_vit.safetensors",
        "teachers.0.input_size": 32, "teachers.1.model": hub / "tiny-clip.json",
        "teachers.1.weights": hub / "tiny-clip.pt", "teachers.2.model": hub / "hf-dinov2",
        "teachers.2.input_size": 32, "data.num_workers": 0, "run.log_every": 1}.items()]
    assert main(["teacher", "cache", "-c", str(config), *overrides, "--workers", "1"]) == 0
    assert main(["pretrain", "-c", str(config), *overrides, "--no-progress"]) == 0
    logs = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "loss" in r]
    assert len(logs) == 2 and set(logs[-1]["weights"]) == {"imagenet", "action", "dino"}
    assert all(f"teacher/{n}" in logs[-1] for n in ("imagenet", "action", "dino"))
    capsys.readouterr()
    # the same weights giving another output are another teacher: the cache is refused, not reused
    other = [*overrides, "teachers.2.embedding=mean_patch", f"run.out={tmp_path / 'other'}"]
    assert main(["pretrain", "-c", str(config), *other, "--no-progress"]) != 0
    assert "stale teacher cache, the teacher's embedding changed" in capsys.readouterr().err


def test_compiled_teacher_traces_and_keeps_its_state_dict(hub, monkeypatch):
    import functools

    # dynamo captures the graph as in a real compile; the eager backend skips the minute of C++ code generation
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = TeacherConfig(name="vit", source="timm", model="test_vit", weights=str(hub / "test_vit.safetensors"),
                        input_size=32)
    plain = build_teacher(cfg)
    compiled = build_teacher(TeacherConfig(**{**cfg.__dict__, "compile": True}))
    assert compiled.compiled and not plain.compiled and compiled.state_dict().keys() == plain.state_dict().keys()
    frames = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(compiled.embed_frames(frames), plain.embed_frames(frames))


@pytest.mark.parametrize("overrides, key", [
    (["teachers.0.source=timm"], "teachers.0.model"),
    (["teachers.0.source=open_clip", "teachers.0.model=ViT-B-16", "teachers.0.weights=nowhere/clip.pt"],
     "teachers.0.weights"),
    (["teachers.0.source=timm", "teachers.0.model=resnet50", "teachers.0.weights=nowhere.safetensors"],
     "teachers.0.weights"),
    (["teachers.0.source=timm", "teachers.0.model=resnet50", "teachers.0.prompt=a {}"], "teachers.0.prompt"),
    (["teachers.0.source=hf", "teachers.0.model=x", "teachers.0.prompt=no slot"], "teachers.0.prompt"),
    (["teachers.0.embedding=middle"], "teachers.0.embedding"),
    (["teachers.0.precision=fp8"], "teachers.0.precision"),
])
def test_hub_teacher_config_mistakes_fail_before_any_work(overrides, key, tmp_path):
    from dtgnet.config import load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"data.root={tmp_path}", *overrides])
