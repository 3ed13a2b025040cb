"""`dtgnet bench --models`: what each student and teacher costs, on the same SynthActions clips.

* ``student_step_s``: per student architecture, a pre-training step of the student alone (two views, self
  term only);
* ``teacher_images_per_s``: per teacher, frames embedded per second at the teacher's own input size;
* ``hub_dtg_online_step_s`` / ``hub_dtg_cached_step_s``: a ViT student's DTG step with a timm, an open_clip
  (prompted, zero-shot action) and a Hugging Face teacher, run online vs read from the per-frame cache.

Costs do not depend on the weights' values, so the timm, open_clip and transformers teachers are built with
random weights saved to local files and loaded back through their config, as a user's files would be (no
download). The models are the ones docs/TEACHERS.md recommends: ConvNeXt-T (timm), CLIP ViT-B/16
(open_clip) and DINOv2 ViT-S/14 (transformers); ``--quick`` swaps in tiny ones of the same kinds.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from ..config import TeacherConfig, validate
from ..data.synth import SynthPreset, generate
from ..registry import STUDENTS
from ..teachers import build_teacher
from .bench import step_time, sync

MIN_FRAMES = {"s3d": 8}
"""Students whose temporal pooling needs longer clips than the bench's: they run at this many frames."""
FULL = dict(preset=SynthPreset(pairs=2, train_per_class=4, val_per_class=1, test_per_class=1, stills_per_class=4,
                               frames=16, size=64),
            frames=4, size=64, batch=4, steps=3, image_batch=16, image_batches=2,
            students=STUDENTS.names(), vit="vit_s",
            timm="convnext_tiny.fb_in22k_ft_in1k", open_clip="ViT-B-16", lite_input=224)
QUICK = dict(preset=SynthPreset(pairs=2, train_per_class=4, val_per_class=1, test_per_class=1, stills_per_class=4,
                                frames=8, size=32),
             frames=2, size=32, batch=4, steps=1, image_batch=4, image_batches=1,
             students=("tsn_r18", "vit_t", "swin3d_t"), vit="vit_t", timm="test_vit", open_clip=None, lite_input=32)
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                             "head_width": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def hub_teacher_configs(work: Path, sizes: dict) -> list[TeacherConfig]:
    """A timm, an open_clip (prompted) and a transformers teacher with random weights in local files."""
    import open_clip
    import timm
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    net = timm.create_model(sizes["timm"], pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(work / "timm.safetensors"))
    clip_name = sizes["open_clip"]
    if clip_name is None:  # quick: a tiny CLIP of the same kind
        (work / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
        clip_name = str(work / "tiny-clip.json")
        open_clip.add_model_config(clip_name)
    clip = open_clip.create_model(Path(clip_name).stem if clip_name.endswith(".json") else clip_name)
    torch.save(clip.state_dict(), work / "clip.pt")
    dims = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                patch_size=14, image_size=518) if sizes["open_clip"] else \
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
             image_size=32)
    transformers.Dinov2Model(transformers.Dinov2Config(**dims)).save_pretrained(work / "dinov2-small")
    crop = 224 if sizes["open_clip"] else 32
    transformers.BitImageProcessor(crop_size={"height": crop, "width": crop}, size={"shortest_edge": crop},
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
                                   ).save_pretrained(work / "dinov2-small")
    return [TeacherConfig("imagenet", "timm", str(work / "timm.safetensors"), model=sizes["timm"]),
            TeacherConfig("action", "open_clip", str(work / "clip.pt"), model=clip_name,
                          prompt="a video of something that moves: {}."),
            TeacherConfig("dino", "hf", model=str(work / "dinov2-small"))]


def _images_per_s(teacher, batch: int, batches: int, device: torch.device) -> float:
    frames = torch.rand(batch, 3, teacher.input_size, teacher.input_size, device=device)
    teacher.embed_frames(frames)  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(batches):
        teacher.embed_frames(frames)
    sync(device)
    return batch * batches / (time.perf_counter() - t)


def run_model_bench(device: str = "cpu", quick: bool = False, work_dir: str | None = None,
                    progress: bool = True) -> dict:
    from .recipes import Sizes, base_config

    sizes = QUICK if quick else FULL
    dev = torch.device(device)
    results: dict = {"student_step_s": {}, "student_frames": {}, "teacher_images_per_s": {}, "teacher_input": {}}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        work = Path(tmp)
        generate(work / "data", sizes["preset"], seed=0, progress=progress)
        cfg = base_config(work / "data", Sizes("bench", sizes["frames"], sizes["size"], sizes["batch"], 1, 1, 1, 64),
                          seed=0)
        cfg.run.device, cfg.optim.epochs, cfg.teachers, cfg.run.teacher_cache = device, 50, [], False
        cfg.student.patch_size = 16 if sizes["size"] % 16 == 0 and not quick else 8
        for arch in sizes["students"]:
            student = copy.deepcopy(cfg)
            student.student.arch = arch
            student.data.frames = max(sizes["frames"], MIN_FRAMES.get(arch, 0))
            results["student_frames"][arch] = student.data.frames
            validate(student)
            results["student_step_s"][arch], _ = step_time(student, work, arch, sizes["steps"])
        hub = hub_teacher_configs(work / "teachers", sizes)
        lite = TeacherConfig("efficientnet_lite0", "efficientnet_lite0", input_size=sizes["lite_input"])
        classes = (work / "data" / "classes.txt").read_text().split()
        for tc in [lite, *hub]:
            teacher = build_teacher(tc, classes).to(dev)
            key = f"{tc.source}:{Path(tc.model).stem}" if tc.model else tc.source
            results["teacher_images_per_s"][key] = _images_per_s(teacher, sizes["image_batch"],
                                                                 sizes["image_batches"], dev)
            results["teacher_input"][key] = teacher.input_size
        dtg = copy.deepcopy(cfg)
        dtg.student.arch, dtg.teachers, dtg.loss.weighting = sizes["vit"], hub, "adaptive"
        validate(dtg)
        results["hub_dtg_online_step_s"], _ = step_time(dtg, work, "hub_online", sizes["steps"])
        cached = copy.deepcopy(dtg)
        cached.run.teacher_cache = True
        t = time.perf_counter()
        results["hub_dtg_cached_step_s"], _ = step_time(cached, work, "hub_cached", sizes["steps"])
        results["hub_cache_build_and_steps_s"] = time.perf_counter() - t
    results["device"], results["threads"] = str(dev), torch.get_num_threads()
    results["config"] = {"quick": quick, "frames": sizes["frames"], "size": sizes["size"],
                         "batch_videos": sizes["batch"], "views": 2, "vit_student": sizes["vit"],
                         "patch_size": cfg.student.patch_size, "teachers": [tc.__dict__ for tc in hub]}
    return results


def format_model_table(r: dict) -> str:
    c = r["config"]
    lines = [f"device {r['device']}, {r['threads']} threads; students: {c['frames']} frames of {c['size']}², "
             f"batch {c['batch_videos']} videos x 2 views"]
    frames = r.get("student_frames", {})
    rows = [(f"student step, {a}" + (f" ({frames[a]} frames)" if frames.get(a, c["frames"]) != c["frames"] else ""),
             f"{s * 1000:.0f} ms") for a, s in r["student_step_s"].items()]
    rows += [(f"teacher {k} at {r['teacher_input'][k]}²", f"{v:.1f} img/s") for k, v in r["teacher_images_per_s"].items()]
    rows += [(f"{c['vit_student']} + timm/open_clip/hf teachers, online", f"{r['hub_dtg_online_step_s'] * 1000:.0f} ms"),
             (f"{c['vit_student']} + the same teachers, cached", f"{r['hub_dtg_cached_step_s'] * 1000:.0f} ms")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(lines + [f"{a:<{width}}  {b:>14}" for a, b in rows])
