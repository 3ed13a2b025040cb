"""Teachers from the image-model libraries users already have: timm, open_clip and Hugging Face transformers.

Each builder returns a :class:`~dtgnet.teachers.base.FrameEncoder`: a module mapping normalised ``(N, 3, S, S)`` frames to ``(N, D)``
with the model's own input size and normalisation read from its pretrained configuration. Weights come from
a local file or directory, or from the library's hub (its cache when offline). Nothing runs remote code:
``trust_remote_code`` is off unless the config turns it on, and weights load as safetensors or through
``torch.load(weights_only=True)``.

A CLIP-family teacher given a ``prompt`` becomes a zero-shot action teacher: its frame embedding is the
vector of class logits against the text embeddings of the prompted class names, centred per frame.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line
from ..io import IMAGENET_MEAN, IMAGENET_STD, read_state_dict, require_extra
from .base import FrameEncoder, patch_grid
from .sources import TeacherSource, register_source


def _side(size) -> int:
    """An image size given as int, (H, W), (C, H, W) or a dict of the processor's kinds -> one side."""
    if not isinstance(size, (int, tuple, list)):  # a dict or transformers' SizeDict
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        size = get("height") or get("shortest_edge")
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return int(size)


# ------------------------------------------------------------------------------------------------ timm

class _TimmEncoder(nn.Module):
    def __init__(self, model: nn.Module, embedding: str):
        super().__init__()
        self.model, self.embedding = model, embedding

    def forward(self, x):
        if self.embedding == "default":
            return self.model(x)  # the model's own pooling, classifier removed
        tokens = self.model.forward_features(x)  # (N, prefix + patches, D)
        prefix = getattr(self.model, "num_prefix_tokens", 1)
        return tokens[:, 0] if self.embedding == "cls" else tokens[:, prefix:].mean(1)

    def tokens(self, x):
        """ViTs: the last block's patch tokens on their grid; CNNs: the last feature map."""
        features = self.model.forward_features(x)
        if features.dim() == 3:  # (N, prefix + patches, D)
            return patch_grid(features, getattr(self.model, "num_prefix_tokens", 0), "timm")
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":  # Swin and others keep channels last
            features = features.permute(0, 3, 1, 2)
        return features  # (N, C, h, w)


def timm_encoder(cfg, class_names=None) -> FrameEncoder:
    """``timm.create_model(cfg.model)``; weights from ``cfg.weights`` (a local file) or timm's hub."""
    timm = require_extra("timm", "timm")
    local = Path(cfg.weights) if cfg.weights else None
    try:
        model = timm.create_model(cfg.model, pretrained=local is None)
    except RuntimeError as e:  # unknown name
        raise ConfigError("teachers.model", f"timm: {first_line(e)}") from None
    except Exception as e:
        raise CheckpointError(f"timm {cfg.model}: cannot load the pretrained weights from the hub or its cache "
                              f"({first_line(e)}); name a local file in teachers.weights") from None
    model.reset_classifier(0)  # forward() now returns the pooled pre-logits features
    if local is not None:  # any classifier in the file goes: a checkpoint fine-tuned on other classes loads too
        heads = model.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in read_state_dict(local, "teachers.weights").items()
                 if not k.startswith(tuple(f"{h}." for h in heads))}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{local}: weights do not match timm {cfg.model} ({first_line(e)})") from None
    if cfg.embedding in ("cls", "mean_patch") and not hasattr(model, "num_prefix_tokens"):
        raise ConfigError("teachers.embedding", f"{cfg.embedding} needs a ViT-style timm model; "
                                                f"{cfg.model} has no tokens (use default)")
    if cfg.embedding not in ("default", "cls", "mean_patch"):
        raise ConfigError("teachers.embedding", f"timm teachers give default, cls or mean_patch, not {cfg.embedding}")
    data = timm.data.resolve_model_data_config(model)
    return FrameEncoder(_TimmEncoder(model.eval(), cfg.embedding), _side(data["input_size"]),
                        tuple(data["mean"]), tuple(data["std"]), None)


# -------------------------------------------------------------------------------------- CLIP family

def _class_phrase(name: str) -> str:
    """``ApplyEyeMakeup`` / ``apply_eye_makeup`` -> ``apply eye makeup``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " ").replace("-", " "))
    return " ".join(spaced.lower().split())


def prompt_texts(cfg, class_names) -> list[str]:
    """The prompts of a zero-shot teacher: ``cfg.prompt`` filled with each class name."""
    names = list(cfg.prompt_classes) or list(class_names or [])
    if not names:
        raise ConfigError("teachers.prompt_classes", "a prompted teacher needs class names: set prompt_classes or "
                                                      "give the data a class list")
    if "{}" not in cfg.prompt:
        raise ConfigError("teachers.prompt", f"must hold {{}} where the class name goes, got {cfg.prompt!r}")
    return [cfg.prompt.format(_class_phrase(n)) for n in names]


class _ZeroShot(nn.Module):
    """Image embedding -> centred class logits ``s * (x/|x|) . (t_c/|t_c|) - mean_c``: an action classifier's
    output with no training (CLIP's zero-shot recipe)."""

    def __init__(self, image_encoder: nn.Module, text_embeddings: torch.Tensor, scale: float):
        super().__init__()
        self.image_encoder, self.scale = image_encoder, scale
        self.register_buffer("text", F.normalize(text_embeddings.float(), dim=-1))  # (C, D)

    def forward(self, x):
        img = F.normalize(self.image_encoder(x).float(), dim=-1)  # (N, D)
        logits = self.scale * img @ self.text.T  # (N, C)
        return logits - logits.mean(1, keepdim=True)

    def tokens(self, x):  # the image tower's patch tokens: logits have no place in space
        return self.image_encoder.tokens(x)


class _OpenClipImage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.encode_image(x)  # CLIP's projected image embedding

    def tokens(self, x):
        """A ViT tower's last block's patch tokens (width of the tower, before the projection)."""
        visual = self.model.visual
        if not hasattr(visual, "output_tokens"):
            raise ConfigError("loss.token_weight", f"open_clip {type(visual).__name__} gives no patch tokens "
                                                   f"(ViT towers do)")
        visual.output_tokens = True
        try:
            _, tokens = visual(x)  # (N, patches, width)
        finally:
            visual.output_tokens = False
        return patch_grid(tokens, 0, "open_clip")


def _open_clip_model(cfg):
    """``open_clip.create_model(cfg.model, pretrained=cfg.weights)``: a pretrained tag or a local checkpoint
    (loaded weights-only). ``cfg.model`` may also be a model-config JSON file for a custom architecture.
    Returns (model in eval mode, its open_clip name)."""
    open_clip = require_extra("open_clip", "clip")
    name = cfg.model
    if name.endswith(".json"):
        if not Path(name).is_file():
            raise ConfigError("teachers.model", f"file not found: {name}")
        try:
            json.loads(Path(name).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("teachers.model", f"{name}: not an open_clip model config ({first_line(e)})") from None
        open_clip.add_model_config(name)
        name = Path(name).stem
    if open_clip.get_model_config(name) is None and not name.startswith("hf-hub:"):
        raise ConfigError("teachers.model", f"open_clip knows no model {name!r} (open_clip.list_models())")
    if cfg.embedding not in ("default", "projected"):
        raise ConfigError("teachers.embedding", f"open_clip teachers give the projected embedding, not {cfg.embedding}")
    local = bool(cfg.weights) and Path(cfg.weights).exists()
    try:
        model = open_clip.create_model(name, pretrained=cfg.weights or None, require_pretrained=bool(cfg.weights),
                                       weights_only=True)
    except Exception as e:
        where = f"{cfg.weights}" if local else f"open_clip {name} {cfg.weights or '(no weights)'}"
        raise CheckpointError(f"{where}: cannot load ({first_line(e)})") from None
    return model.eval(), name


def _open_clip_texts(model, name: str, texts: list[str]) -> tuple[torch.Tensor, float]:
    tokenizer = require_extra("open_clip", "clip").get_tokenizer(name)
    with torch.no_grad():
        return model.encode_text(tokenizer(texts)), float(model.logit_scale.detach().exp())


def open_clip_encoder(cfg, class_names=None) -> FrameEncoder:
    """An open_clip model's image tower (:func:`_open_clip_model`); with ``cfg.prompt``, a zero-shot
    classifier over the prompted class names."""
    open_clip = require_extra("open_clip", "clip")
    model, name = _open_clip_model(cfg)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pre.get("mean") or getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(pre.get("std") or getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    size = _side(pre.get("size") or model.visual.image_size)
    encoder: nn.Module = _OpenClipImage(model)
    if cfg.prompt:
        encoder = _ZeroShot(encoder, *_open_clip_texts(model, name, prompt_texts(cfg, class_names)))
    return FrameEncoder(encoder, size, mean, std, None)


def open_clip_text(cfg, texts: list[str]) -> tuple[torch.Tensor, float]:
    """Teacher ``cfg``'s text embeddings ``(C, D)`` of ``texts`` and its logit scale."""
    model, name = _open_clip_model(cfg)
    return _open_clip_texts(model, name, texts)


# -------------------------------------------------------------------------------------- transformers

class _HfImage(nn.Module):
    """A transformers vision model -> the embedding chosen in ``embedding``."""

    def __init__(self, model, embedding: str, interpolate: bool, prefix_tokens: int):
        super().__init__()
        self.model, self.embedding, self.prefix = model, embedding, prefix_tokens
        self.kwargs = {"interpolate_pos_encoding": True} if interpolate else {}

    def forward(self, x):
        if self.embedding == "projected":
            out = self.model.get_image_features(pixel_values=x, **self.kwargs)
            return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns an output object
        vision = getattr(self.model, "vision_model", self.model)
        out = vision(pixel_values=x, **self.kwargs)
        if self.embedding == "pooled":
            return out.pooler_output
        tokens = out.last_hidden_state  # (N, prefix + patches, D)
        return tokens[:, 0] if self.embedding == "cls" else tokens[:, self.prefix:].mean(1)

    def tokens(self, x):
        """The vision tower's last hidden state's patch tokens on their grid."""
        vision = getattr(self.model, "vision_model", self.model)
        return patch_grid(vision(pixel_values=x, **self.kwargs).last_hidden_state, self.prefix, "hf")


def _hf_preprocessing(source: str, config, local: bool, trust: bool) -> tuple[int, tuple, tuple]:
    """Input side, mean and std from the model's image processor; without one, from its config and the
    processor class transformers registers for the model type."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES


    processor_file = True
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(source, trust_remote_code=trust,
                                                               local_files_only=local)
    except Exception:
        processor_file = False
        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(config.model_type)
        if isinstance(names, dict):  # transformers 5: {backend: class name}
            names = tuple(names.values())
        names = names if isinstance(names, (tuple, list)) else (names,)
        cls = next((getattr(transformers, n) for n in names if n and hasattr(transformers, n)), None)
        if cls is None:
            raise ConfigError("teachers.model", f"{source}: no image processor and none known for model type "
                                                f"{config.model_type!r}") from None
        proc = cls()
    mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    if not processor_file and config.model_type.startswith("dinov2"):  # its processor class defaults to CLIP's
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    vision = getattr(config, "vision_config", config)
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    size = crop or getattr(proc, "size", None) or vision.image_size  # DINOv2: crop 224 of a 518-trained model
    return _side(size), mean, std


def _hf_model(cfg):
    """A Hugging Face model id or local directory, loaded: (model in eval mode, its config, local)."""
    transformers = require_extra("transformers", "hf")
    transformers.utils.logging.disable_progress_bar()
    source = cfg.model
    local = Path(source).is_dir()
    trust = cfg.trust_remote_code
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust, local_files_only=local)
        model = transformers.AutoModel.from_pretrained(source, trust_remote_code=trust, local_files_only=local)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ConfigError("teachers.trust_remote_code",
                              f"{source} needs code from its repository; set it to true only if you trust it") from None
        raise CheckpointError(f"{source}: cannot load ({first_line(e)})") from None
    except Exception as e:
        where = "the directory" if local else "the hub or its cache, and no local directory has that name"
        raise CheckpointError(f"{source}: cannot load from {where} ({first_line(e)})") from None
    return model.eval(), config, local


def _hf_texts(model, config, source: str, local: bool, texts: list[str]) -> tuple[torch.Tensor, float]:
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ConfigError("teachers.prompt", f"{source} has no text tower; prompts need a CLIP-family model")
    transformers = require_extra("transformers", "hf")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception as e:
        raise CheckpointError(f"{source}: no tokenizer for the prompts ({first_line(e)})") from None
    tokens = tokenizer(texts, padding="max_length", truncation=True,
                       max_length=getattr(config.text_config, "max_position_embeddings", 64), return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
    text = text if torch.is_tensor(text) else text.pooler_output
    return text, float(model.logit_scale.detach().exp())


def hf_encoder(cfg, class_names=None) -> FrameEncoder:
    """A Hugging Face model id or local directory: CLIP / SigLIP (projected image embedding by default),
    DINOv2 and other ViTs (CLS token by default, or mean of patch tokens)."""
    source = cfg.model
    model, config, local = _hf_model(cfg)
    projects = hasattr(model, "get_image_features")
    embedding = cfg.embedding if cfg.embedding != "default" else ("projected" if projects else "cls")
    if embedding == "projected" and not projects:
        raise ConfigError("teachers.embedding", f"{source} has no image projection (use cls, mean_patch or pooled)")
    if cfg.prompt and not (projects and hasattr(model, "get_text_features")):
        raise ConfigError("teachers.prompt", f"{source} has no text tower; prompts need a CLIP-family model")
    size, mean, std = _hf_preprocessing(source, config, local, cfg.trust_remote_code)
    vision = getattr(config, "vision_config", config)
    native = getattr(vision, "image_size", size)
    wanted = cfg.input_size or size
    prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0)
    vision_model = getattr(model, "vision_model", model)
    interpolate = wanted != native and "interpolate_pos_encoding" in inspect.signature(vision_model.forward).parameters
    encoder: nn.Module = _HfImage(model, embedding, interpolate, prefix)
    if cfg.prompt:
        encoder = _ZeroShot(encoder, *_hf_texts(model, config, source, local, prompt_texts(cfg, class_names)))
    return FrameEncoder(encoder, size, mean, std, None)


def hf_text(cfg, texts: list[str]) -> tuple[torch.Tensor, float]:
    """Teacher ``cfg``'s text embeddings ``(C, D)`` of ``texts`` and its logit scale (CLIP / SigLIP)."""
    model, config, local = _hf_model(cfg)
    return _hf_texts(model, config, cfg.model, local, texts)


# ------------------------------------------------------------------------------------------------ sources

def _check_hub(key: str, cfg, check_paths: bool) -> None:
    if not cfg.model:
        raise ConfigError(f"{key}.model", f"source {cfg.source} needs a model name"
                                          f"{' or directory' if cfg.source == 'hf' else ''}")
    local_file = cfg.source == "timm" or Path(cfg.weights).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if check_paths and cfg.source in ("timm", "open_clip") and cfg.weights and local_file \
            and not Path(cfg.weights).is_file():
        raise ConfigError(f"{key}.weights", f"file not found: {cfg.weights}")


def _hub_source(name: str, build, text=None) -> TeacherSource:
    # which output is the embedding is chosen by the config, not stored in the weights
    return TeacherSource(name, build, _check_hub, prompts=text is not None, describes=("model", "embedding", "prompt"),
                         text=text)


register_source(_hub_source("timm", timm_encoder))
register_source(_hub_source("open_clip", open_clip_encoder, open_clip_text))
register_source(_hub_source("hf", hf_encoder, hf_text))
