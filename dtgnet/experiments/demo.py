"""`dtgnet demo`: the whole method on SynthActions, offline, from nothing.

1. generate SynthActions; 2. train the image-based action teacher on its stills; 3. DTG pre-train with both
teachers (bundled ImageNet EfficientNet-Lite0 + the action teacher) and the same SSL without teachers;
4. fine-tune each, and a student from scratch, on 10 % of the labels; 5. train the same student on single
frames with all labels (what appearance alone reaches); 6. evaluate all on the test split; 7. write
results.json and report.md / report.html.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..data.synth import generate
from ..evaluation import eval_dataset, evaluate_model, extract, frozen_feature_scores
from ..students import load_student
from ..teachers import train_action_teacher
from ..training import pick_device, train
from .recipes import Sizes, base_config, finetune_config, fresh_out_dir, pretrain_config, synth_teachers

PLANS = {
    "quick": Sizes("quick", frames=4, size=48, batch_size=16, pretrain_epochs=6, finetune_epochs=40,
                   single_frame_epochs=6, teacher_input=96),
    "full": Sizes("default", frames=4, size=48, batch_size=24, pretrain_epochs=10, finetune_epochs=40,
                  single_frame_epochs=8, teacher_input=96),
    # CI size: every stage and the report, three steps per run (the numbers mean nothing)
    "smoke": Sizes("smoke", frames=4, size=32, batch_size=16, pretrain_epochs=1, finetune_epochs=1,
                   single_frame_epochs=1, teacher_input=64, label_fraction=0.5, max_steps=3),
}


def run_demo(out, quick: bool = False, seed: int = 0, force: bool = False, progress: bool = True,
             smoke: bool = False) -> dict:
    from .reports import write_report

    out = fresh_out_dir(out, force)
    plan = PLANS["smoke" if smoke else "quick" if quick else "full"]
    t0 = time.time()
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.time()
        r = fn(*a, **kw)
        timings[name] = round(time.time() - t, 1)
        return r

    data_dir, runs = out / "data", out / "runs"
    device = pick_device("auto")
    synth = timed("synth", generate, data_dir, plan.preset, seed, progress)
    action = timed("action_teacher", train_action_teacher, data_dir / "stills", out / "teachers" / "action.safetensors",
                   input_size=plan.teacher_input, seed=seed, progress=progress)
    base = base_config(data_dir, plan, seed)
    teachers = synth_teachers(plan, action["path"])
    dtg = pretrain_config(base, runs, "dtg_pretrain", teachers, plan)
    dtg.loss.weighting = "adaptive"  # label-free weights that follow each teacher (the study's choice)
    jobs = {
        "dtg_pretrain": ("pretrain", dtg, None),
        "ssl_pretrain": ("pretrain", pretrain_config(base, runs, "ssl_pretrain", [], plan), None),
    }
    for name, (mode, cfg, init) in jobs.items():
        timed(name, train, cfg, mode, init, progress=progress)
    finetunes = {
        "dtg": finetune_config(base, runs, "dtg_finetune", plan),
        "ssl": finetune_config(base, runs, "ssl_finetune", plan),
        "scratch": finetune_config(base, runs, "scratch_finetune", plan),
        "single_frame": finetune_config(base, runs, "single_frame", plan, frames=1, label_fraction=1.0,
                                        epochs=plan.single_frame_epochs),
    }
    inits = {"dtg": runs / "dtg_pretrain" / "student.safetensors",
             "ssl": runs / "ssl_pretrain" / "student.safetensors"}
    results: dict = {}
    for name, cfg in finetunes.items():
        timed(f"{name}_finetune", train, cfg, "finetune", str(inits[name]) if name in inits else None,
              progress=progress)
        model = load_student(Path(cfg.run.out) / "student.safetensors", device)
        res = timed(f"{name}_eval", evaluate_model, model, cfg, "finetune", device)
        results[name] = {"top1": res["video_top1"], "clip_top1": res["clip_top1"],
                         "label_fraction": cfg.data.label_fraction, "frames": cfg.data.frames,
                         "predictions": res["predictions"], "labels": res["labels"]}
    # representation quality of the pre-trained students, before any label is used
    embeddings = {}
    for name in ("dtg", "ssl"):
        cfg = jobs[f"{name}_pretrain"][1]
        model = load_student(Path(cfg.run.out) / "student.safetensors", device)
        train_f, test_f = (extract(model, eval_dataset(cfg, subset, model.temporal), device) for subset in ("train", "test"))
        scores = frozen_feature_scores(train_f, test_f)  # features extracted once for kNN, retrieval and the map
        results[name].update({"knn_top1": scores["knn_top1"],
                              **{f"retrieval_{k}": v for k, v in scores.items() if k.startswith("R@")}})
        if name == "dtg":
            embeddings = {"x": scores["test_x"].tolist(), "labels": test_f["labels"].tolist()}
    metrics = {name: json.loads((runs / f"{name}_pretrain" / "metrics.json").read_text()) for name in ("dtg", "ssl")}
    summary = {
        **{k: {kk: vv for kk, vv in v.items() if kk not in ("predictions", "labels")} for k, v in results.items()},
        "action_teacher": {"train_acc": action["train_acc"], "val_acc": action["val_acc"]},
        "teacher_weights": metrics["dtg"]["teacher_weights"], "weighting": dtg.loss.weighting,
        "data": {"preset": synth["preset"], "classes": synth["classes"], "videos": synth["videos"],
                 "stills": synth["stills"]},
        "plan": dataclasses.asdict(plan), "timings_s": timings, "seconds": round(time.time() - t0, 1),
        "machine": {"threads": torch.get_num_threads(), "device": str(device)},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    classes = (data_dir / "classes.txt").read_text().split()
    write_report(out, summary, results, classes, embeddings, runs)
    return summary
