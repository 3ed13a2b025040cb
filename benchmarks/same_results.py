"""Does a change leave results untouched? Run the same jobs on two versions of the code and compare them.

    python benchmarks/same_results.py run OUT          # with the code importable as `dtgnet` (PYTHONPATH=...)
    python benchmarks/same_results.py compare OLD NEW  # exit 1 when anything but timings differs

``run`` executes, each in its own process: ``dtgnet study --quick``; SynthActions ``quick`` and its action
teacher; then ``configs/synth_dtg.yaml`` for 30 steps with cached teachers, with online teachers, and with
every optional loss term (adaptive weights, a queue, time arrow, regression, relational, per-segment), a
20-step fine-tune from the first run and a 20-step semi-supervised joint run with learned weights.
``compare`` requires every number of ``study.json`` and ``runs.json`` (timings aside), every logged loss,
term and teacher weight, every ``metrics.json`` and every final weight to be identical.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synth_dtg.yaml"
STEPS = ["optim.max_steps=30", "run.log_every=1"]
RUNS = {  # name: (mode, overrides, options)
    "cached": ("pretrain", STEPS, []),
    "online": ("pretrain", [*STEPS, "run.teacher_cache=false"], []),
    "extras": ("pretrain", [*STEPS, "run.teacher_cache=false", "loss.weighting=adaptive", "loss.queue_size=32",
                            "loss.reverse_weight=0.5", "loss.regression_weight=0.5", "loss.relational_weight=0.5",
                            "loss.segment_weight=0.5"], []),
    "ft": ("finetune", ["optim.max_steps=20", "run.log_every=1", "teachers=[]", "data.label_fraction=0.5"],
           ["--init", "runs/cached/student.safetensors"]),
    "joint": ("joint", ["optim.max_steps=20", "run.log_every=1", "data.joint_unlabelled=true",
                        "data.label_fraction=0.5", "loss.weighting=learned"], []),
}
TIMING_KEYS = ("time", "seconds", "clips_per_s", "data_wait_frac", "tflops", "mfu")


def dtgnet(*args: str, cwd: Path) -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dtgnet", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    print(f"{' '.join(args[:3])}: {time.perf_counter() - t0:.0f} s", flush=True)


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dtgnet("study", "--quick", "--force", "--out", "study", cwd=out)
    dtgnet("data", "synth", "data/synth", "--preset", "quick", "--seed", "0", cwd=out)
    dtgnet("teacher", "train", "data/synth/stills", "--out", "teachers/action.safetensors", cwd=out)
    for name, (mode, overrides, options) in RUNS.items():
        dtgnet(mode, "-c", str(CONFIG), *overrides, f"run.out=runs/{name}", "--force", "--no-progress", *options,
               cwd=out)


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj


def compare(old: Path, new: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    same = True

    def report(what: str, equal: bool) -> None:
        nonlocal same
        same &= equal
        print(f"{what}: {'identical' if equal else 'DIFFERENT'}")

    for name in ("study.json", "runs.json"):
        a, b = (strip_timings(json.loads((d / "study" / name).read_text())) for d in (old, new))
        report(f"study/{name}", a == b)
    for run_name in RUNS:
        logs = [strip_timings([json.loads(line) for line in (d / "runs" / run_name / "log.jsonl").open()])
                for d in (old, new)]
        metrics = [json.loads((d / "runs" / run_name / "metrics.json").read_text()) for d in (old, new)]
        wa, wb = (load_file(str(d / "runs" / run_name / "student.safetensors")) for d in (old, new))
        weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        report(f"{run_name}: {len(logs[0])} log records, metrics, {len(wa)} weight tensors",
               logs[0] == logs[1] and metrics[0] == metrics[1] and weights)
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out.resolve())
        return 0
    return 0 if compare(args.old, args.new) else 1


if __name__ == "__main__":
    sys.exit(main())
