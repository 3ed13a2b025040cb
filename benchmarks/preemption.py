"""Kill and preempt pre-training runs at random steps; check that each resumes at once and ends bit-identical.

    python benchmarks/preemption.py [--trials 10] [--steps 12] [--workers 2] [--out DIR]

Generates a small SynthActions set, trains one uninterrupted reference run, then for each trial starts the
same run, waits for a random step and either kills it with SIGKILL (its DataLoader workers outlive it for a
few seconds) or sends SIGTERM (the preemption notice of a cluster). The run is resumed at once with
``--resume auto`` and its final checkpoint (model, optimizer, teacher weighting, queue) compared tensor by
tensor with the reference. Prints one line per trial and a summary: resumes accepted, bit-identical runs,
and for SIGTERM the seconds from the signal to exit and the steps between the last logged step and the
checkpoint.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dtgnet.data.synth import SynthPreset, generate
from dtgnet.io import load_checkpoint
from dtgnet.training.checkpoint import state_tensors
from dtgnet.training.runlog import read_log

PRESET = SynthPreset(pairs=2, train_per_class=6, val_per_class=2, test_per_class=3, stills_per_class=6,
                     frames=8, size=32)


def overrides(root: Path, out: Path, steps: int, workers: int) -> list[str]:
    cfg = {"data.root": root, "data.train_list": root / "train.txt", "data.classes": root / "classes.txt",
           "data.frames": 2, "data.size": 32, "data.num_workers": workers, "optim.batch_size": 4,
           "optim.epochs": 100, "optim.max_steps": steps, "run.out": out, "run.log_every": 1,
           "run.checkpoint_every": 1, "run.threads": 1, "run.teacher_cache": True, "loss.weighting": "adaptive",
           "loss.queue_size": 8, "student.proj_hidden": 32, "student.proj_dim": 16, "teachers.0.input_size": 32,
           "student.temporal_shift": True}
    return [f"{k}={v}" for k, v in cfg.items()]


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dtgnet", "pretrain", *args, "--no-progress"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def tensors(run_dir: Path) -> dict:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {"step": ckpt["step"], **state_tensors(ckpt)}


def logged_step(run_dir: Path) -> int:
    return max([r["step"] for r in read_log(run_dir / "log.jsonl") if "loss" in r], default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="interruptions (alternating SIGKILL and SIGTERM)")
    ap.add_argument("--steps", type=int, default=12, help="training steps of each run")
    ap.add_argument("--workers", type=int, default=2, help="data.num_workers")
    ap.add_argument("--seed", type=int, default=0, help="chooses the interruption steps")
    ap.add_argument("--out", default="", help="working directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="dtgnet-preempt-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "data"
    if not (root / "train.txt").exists():
        generate(root, PRESET, seed=0, progress=False)
    for old in [work / "reference", *work.glob("trial*")]:  # runs of an earlier invocation
        shutil.rmtree(old, ignore_errors=True)
    ref = launch(overrides(root, work / "reference", args.steps, args.workers))
    if ref.wait() != 0:
        sys.exit(f"reference run failed: {ref.stderr.read()[-2000:]}")
    reference = tensors(work / "reference")
    rng = random.Random(args.seed)
    accepted = identical = 0
    latencies, overshoot = [], []
    for trial in range(args.trials):
        sig = (signal.SIGKILL, signal.SIGTERM)[trial % 2]
        at = rng.randint(1, args.steps - 2)
        out = work / f"trial{trial}"
        cmd = overrides(root, out, args.steps, args.workers)
        p = launch(cmd)
        while p.poll() is None and logged_step(out) < at:
            time.sleep(0.01)
        seen = logged_step(out)
        t0 = time.perf_counter()
        p.send_signal(sig)
        rc = p.wait()
        exit_s = time.perf_counter() - t0
        last = out / "checkpoints" / "last.pt"
        saved = load_checkpoint(last)["step"] if last.exists() else 0  # killed before its first checkpoint
        resumed = launch(cmd + ["--resume", "auto"])
        ok = resumed.wait() == 0
        accepted += ok
        final = tensors(out) if ok else {}
        same = ok and final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final
                                                                if k != "step") and final["step"] == args.steps
        identical += same
        note = ""
        if sig == signal.SIGTERM:
            latencies.append(exit_s)
            overshoot.append(saved - seen)
            note = f"exit status {rc} after {exit_s:.2f} s, checkpoint {saved - seen:+d} steps from the last logged"
        print(f"trial {trial}: {signal.Signals(sig).name:7s} at logged step {seen:2d}, resumed from {saved:2d}: "
              f"{'accepted' if ok else 'REFUSED: ' + resumed.stderr.read().strip()[-300:]}, "
              f"{'bit-identical' if same else 'DIFFERENT'} {note}", flush=True)
    print(f"\n{accepted}/{args.trials} resumes accepted at once, {identical}/{args.trials} bit-identical "
          f"(data.num_workers={args.workers}, {args.steps} steps, {work})")
    if latencies:
        print(f"SIGTERM: exit {min(latencies):.2f}-{max(latencies):.2f} s after the signal; checkpoint "
              f"{min(overshoot)}-{max(overshoot)} steps after the last logged step")


if __name__ == "__main__":
    main()
