"""``dtgnet predict``: class probabilities per video (the mean softmax over its clips, as ``dtgnet eval``'s
video-level score) or per sliding window, from the student's classifier or, zero-shot, from its head for a
CLIP-family teacher against that teacher's text embeddings of prompted class names."""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, TeacherConfig, build_section
from ..errors import CheckpointError, ConfigError
from ..registry import TEACHER_SOURCES
from ..teachers.hub import prompt_texts
from .stream import VideoResult

DEFAULT_PROMPT = "a video of a person {}."


@dataclass
class Scorer:
    """Class names and ``probs(model, clips) -> {"probs": (B, K)}``."""

    classes: list[str]
    outputs: Callable
    kind: str  # "classifier" or "zero-shot via <teacher>"


def checkpoint_classes(meta: dict, path) -> list[str]:
    """The class names a fine-tuned or joint student was written with; an older file without them gets class
    indices, with a warning."""
    k = int(meta.get("num_classes", 0))
    names = list(meta.get("classes") or [])
    if len(names) == k:
        return names
    warnings.warn(f"{path}: the file carries no class names; classes are given as indices 0..{k - 1}")
    return [str(i) for i in range(k)]


def classifier_scorer(meta: dict, path) -> Scorer:
    if not meta.get("num_classes"):
        raise CheckpointError(
            f"{path}: a pre-trained student has no classifier; use `dtgnet embed` for its features, "
            f"`dtgnet finetune --init {path}` to train one, or --zero-shot --classes with a CLIP-family teacher")

    def outputs(model, x):
        return {"probs": model.classifier(model.features(x)).float().softmax(-1)}  # (B, K)

    return Scorer(checkpoint_classes(meta, path), outputs, "classifier")


def zero_shot_teacher(meta: dict, name: str = "") -> TeacherConfig:
    """The student's CLIP-family teacher whose head zero-shot classification uses (``name``, or the only one)."""
    cfg = build_section(Config, meta["config"])
    heads = meta.get("teacher_heads", {})
    usable = [t for t in cfg.teachers if t.name in heads and TEACHER_SOURCES.get(t.source, "teachers.source").text]
    if name:
        usable = [t for t in usable if t.name == name]
    if not usable:
        which = f"teacher {name!r}" if name else "teacher"
        raise ConfigError("--zero-shot", f"the student has no head for a CLIP-family {which} (open_clip or hf "
                                         f"CLIP / SigLIP); its heads: {', '.join(heads) or 'none'}")
    if len(usable) > 1:
        raise ConfigError("--teacher", f"several CLIP-family teachers: name one of {', '.join(t.name for t in usable)}")
    teacher = usable[0]
    if teacher.prompt:
        raise ConfigError("--zero-shot", f"teacher {teacher.name} was a prompted (zero-shot action) teacher: its "
                                         f"head predicts that teacher's class logits, not its image embedding")
    if teacher.embedding not in ("default", "projected"):
        raise ConfigError("--zero-shot", f"teacher {teacher.name}'s embedding is {teacher.embedding}, not the "
                                         f"projected one its text tower shares")
    return teacher


def zero_shot_scorer(meta: dict, classes: list[str], teacher_name: str = "", prompt: str = DEFAULT_PROMPT) -> Scorer:
    """``p(c | clip) = softmax_c(s * norm(h_k(f(clip))) . norm(text_c))``: the head for CLIP-family teacher k,
    against the teacher's text tower on ``prompt`` filled with each class name (only the text tower runs)."""
    if not classes:
        raise ConfigError("--classes", "zero-shot classification needs class names")
    teacher = zero_shot_teacher(meta, teacher_name)
    texts = prompt_texts(replace(teacher, prompt=prompt, prompt_classes=list(classes)), classes)
    text, scale = TEACHER_SOURCES.get(teacher.source, "teachers.source").text(teacher, texts)
    text = F.normalize(text.float(), dim=-1)  # (K, D)
    head = teacher.name

    def outputs(model, x):
        u = F.normalize(model.teacher_heads[head](model.features(x)).float(), dim=-1)  # (B, D)
        return {"probs": (scale * u @ text.to(u.device).T).softmax(-1)}  # (B, K)

    return Scorer(list(classes), outputs, f"zero-shot via {head}")


def read_class_names(value: str) -> list[str]:
    """``--classes``: a file with one name per line, or names separated by commas."""
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        # classInd.txt lines are "1 ApplyEyeMakeup"
        return [n.split(maxsplit=1)[1] if n.split(maxsplit=1)[0].isdigit() and " " in n else n for n in names]
    return [n.strip() for n in value.split(",") if n.strip()]


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classes[i], "prob": round(float(probs[i]), 6)} for i in order]


def record(result: VideoResult, classes: list[str], k: int, windows: bool) -> dict:
    """One video's JSON object: path, duration, top-k (and the windows' top-k), or its error."""
    plan = result.plan
    out = {"path": plan.path, "duration": None if plan.duration is None else round(plan.duration, 3),
           "frames": plan.frames}
    if result.reason:
        return {**out, "error": result.reason}
    probs = result.outputs["probs"]  # (rows, K)
    out["top"] = top_k(probs.mean(0) if windows else probs[0], classes, k)
    if windows:
        out["windows"] = [{"start": round(s[0], 3), "end": round(s[1], 3), "top": top_k(p, classes, k)}
                          for s, p in zip(plan.spans, probs)]
    return out


def format_csv(records: list[dict]) -> str:
    """One row per video (or per window): path, start, end, rank, class, prob, error."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "start", "end", "rank", "class", "prob", "error"])
    for r in records:
        if "error" in r:
            w.writerow([r["path"], "", "", "", "", "", r["error"]])
            continue
        rows = r.get("windows") or [{"start": 0.0, "end": r["duration"], "top": r["top"]}]
        for win in rows:
            for rank, t in enumerate(win["top"], 1):
                w.writerow([r["path"], win["start"], win["end"], rank, t["class"], t["prob"], ""])
    return buf.getvalue()


def format_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def classifier_outputs_match(model: torch.nn.Module, scorer: Scorer) -> None:
    """The checkpoint's classifier width agrees with its class names (a file edited by hand may not)."""
    if scorer.kind == "classifier" and model.classifier[-1].out_features != len(scorer.classes):
        raise CheckpointError(f"the classifier has {model.classifier[-1].out_features} outputs but "
                              f"{len(scorer.classes)} class names")
