"""`optim.micro_batch` (GradCache) and `student.checkpointing`: peak memory and step time of one pre-training
step of a ViT-S student at 16 frames of 112², against the whole batch at once.

    python benchmarks/micro_batch.py [--batch 16] [--micro 2] [--frames 16] [--size 112] [--steps 2]
                                     [--arch vit_s] [--json F]

Each setting trains ``--steps`` real steps (SynthActions videos, the bundled EfficientNet-Lite0 teacher
online, self term, InfoNCE over the batch) in its own process, on the GPU when there is one. Memory: the
process's peak resident set (``ru_maxrss``) and how far it rose above the resident set before the first step
(the step's own memory: activations, gradients, optimiser state); on a GPU, the device's peak allocation
(``torch.cuda.max_memory_allocated``) and its rise over the steps. Time: the fastest step after the first
(on a GPU, once its kernels have finished). The gradients of micro-batches equal the whole batch's
(tests/training/test_gradcache.py) for students without batch norm in the backbone; for each ``--compare``
student the script also measures how far a micro-batched step's gradient lies from the whole batch's
(relative L2 distance and cosine, float32, the same batch): ~1e-6 for a ViT (float32 rounding), more for a
BatchNorm backbone, whose micro-batches are normalised by their own statistics.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"whole batch": [], "micro-batch": ["optim.micro_batch={micro}"],
            "checkpointing": ["student.checkpointing=true"],
            "micro-batch + checkpointing": ["optim.micro_batch={micro}", "student.checkpointing=true"]}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def trainer(data: str, out: str, overrides: list[str]):
    """A pre-training Trainer on the SynthActions under ``data``, its run under ``out``."""
    from dtgnet.config import load_config
    from dtgnet.training import Trainer

    cfg = load_config(None, [f"data.root={data}", f"data.train_list={data}/train.txt",
                             f"data.classes={data}/classes.txt", f"run.out={out}/run", "data.flip=false",
                             "teachers.0.input_size=112", *overrides])
    return Trainer(cfg, "pretrain", progress=False)


def one_setting(data: str, overrides: list[str], steps: int) -> dict:
    """Run in a fresh process: ``steps`` training steps; memory and time."""
    import torch

    with tempfile.TemporaryDirectory() as out:
        tr = trainer(data, out, overrides)
        cuda = tr.device.type == "cuda"
        batches = [tr.to_batch(raw) for raw, _ in zip(tr.loader(0), range(steps))]
        before = rss_mib()
        if cuda:  # on a GPU the step's memory is the device's: what the caching allocator handed out
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu_before = torch.cuda.memory_allocated()
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            tr.train_step(batch)
            if cuda:
                torch.cuda.synchronize()  # the step's kernels have finished, not only been queued
            times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {"peak_rss_mib": round(peak), "before_steps_mib": round(before), "step_mib": round(peak - before),
                  "step_s": round(min(times[1:] or times), 3), "threads": torch.get_num_threads(),
                  "device": torch.cuda.get_device_name() if cuda else "cpu"}
        if cuda:
            gpu_peak = torch.cuda.max_memory_allocated()
            result.update(gpu_peak_mib=round(gpu_peak / 2**20), gpu_step_mib=round((gpu_peak - gpu_before) / 2**20))
        tr.close()
    return result


def step_memory(r: dict) -> int:
    """The step's own memory: on the GPU where it ran there, else the process's resident set."""
    return r.get("gpu_step_mib", r["step_mib"])


def describe(r: dict) -> str:
    if "gpu_step_mib" in r:
        return f"GPU peak {r['gpu_peak_mib']:6d} MiB   step's own {r['gpu_step_mib']:6d} MiB"
    return f"peak RSS {r['peak_rss_mib']:6d} MiB   step's own {r['step_mib']:6d} MiB"


def gradient_distance(data: str, overrides: list[str], micro: int) -> dict:
    """One batch's gradient with ``optim.micro_batch=micro`` against the whole batch's, from the same state."""
    import copy

    import torch

    with tempfile.TemporaryDirectory() as out:
        tr = trainer(data, out, overrides)
        tr.model.train()  # as fit() does: student.freeze_bn takes effect here
        batch = tr.to_batch(next(iter(tr.loader(0))))
        start, rng = copy.deepcopy(tr.step_module.state_dict()), torch.get_rng_state()
        grads = []
        for m in (0, micro):
            tr.step_module.load_state_dict(start)
            torch.set_rng_state(rng)
            tr.cfg.optim.micro_batch = m
            tr.backward(batch)
            grads.append(torch.cat([p.grad.flatten() for p in tr.step_module.parameters() if p.grad is not None]).double())
        tr.close()
    whole, cached = grads
    return {"relative_l2": float((cached - whole).norm() / whole.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(cached, whole, dim=0))}


def student_overrides(args) -> list[str]:
    """The measured student, frames and batch (``--arch``, ``--frames``, ``--size``, ``--batch``)."""
    return [f"student.arch={args.arch}", f"data.frames={args.frames}", f"data.size={args.size}",
            f"optim.batch_size={args.batch}", "student.patch_size=16", "student.tubelet=2",
            "student.temporal_shift=false"]


def write_videos(work: str, args) -> None:
    """Enough SynthActions videos under ``work`` for ``--steps`` batches of ``--batch``."""
    from dtgnet.data.synth import SynthPreset, generate

    generate(work, SynthPreset(pairs=2, train_per_class=max(2, args.batch * args.steps // 4 + 1), val_per_class=1,
                               test_per_class=1, stills_per_class=1, frames=args.frames, size=64), progress=False)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--arch", default="vit_s")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--compare", nargs="*", default=["vit_s", "tsn_r18", "tsn_r18+freeze_bn"],
                    help="students whose micro-batched gradient is compared with the whole batch's "
                         "(+freeze_bn: batch norm on running statistics)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-compare", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_setting(args.child[0], json.loads(args.child[1]), args.steps)))
        return {}
    if args.child_compare:
        print(json.dumps(gradient_distance(args.child_compare[0], json.loads(args.child_compare[1]), args.micro)))
        return {}
    common = student_overrides(args)
    results, distances = {}, {}

    def child(flag: str, work: str, overrides: list[str]) -> dict:
        run = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--micro", str(args.micro), flag,
                              work, json.dumps(overrides)], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{overrides}: {run.stderr[-2000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as work:
        write_videos(work, args)
        for name, extra in SETTINGS.items():
            results[name] = r = child("--child", work, common + [e.format(micro=args.micro) for e in extra])
            print(f"{name:28s} step {r['step_s']:7.3f} s   {describe(r)}", flush=True)
        for arch in args.compare:
            name, frozen = arch.split("+")[0], arch.endswith("+freeze_bn")
            shape = (common + [f"student.arch={name}"] + (["student.freeze_bn=true"] if frozen else [])
                     + (["student.temporal_shift=true"] if name.startswith("tsn") else []))
            distances[arch] = d = child("--child-compare", work, shape)
            print(f"{arch}: micro-batches of {args.micro} vs the whole batch of {args.batch}: gradient relative "
                  f"L2 distance {d['relative_l2']:.2e}, cosine {d['cosine']:.6f}", flush=True)
    whole = results["whole batch"]
    for name, r in results.items():
        r["memory_vs_whole"] = round(step_memory(whole) / max(1, step_memory(r)), 2)
        r["time_vs_whole"] = round(r["step_s"] / whole["step_s"], 2)
    print("step memory falls", ", ".join(f"{r['memory_vs_whole']}x with {n}" for n, r in results.items()
                                         if n != "whole batch"))
    settings = {k: v for k, v in vars(args).items() if not k.startswith("child")}
    report = {"settings": settings, "machine": platform.platform(), "results": results,
              "gradient_distance": distances}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
