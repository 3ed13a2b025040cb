"""Try a method or recipe change on a few study entries, scored on the val split only.

    python benchmarks/study_probe.py --out probes/queue --reuse study_out --seeds 0 1 \\
        --entries scratch ssl dtg_equal -- loss.queue_size=480

Trains the named entries of `dtgnet study` (full sizes) with the given dotted overrides and prints, per entry,
the mean over seeds of the val top-1 after fine-tuning on 10 % of the labels and of the val kNN top-1 / R@1
of its label-free representation. Changes are chosen on val; ``--report-test`` adds test top-1 for a change
already chosen. ``--reuse``
links the data, prepared frames, action teacher and teacher caches of an existing study instead of making them
again. ``--finetune-lr`` / ``--finetune-head-scale`` change the fine-tune recipe.
"""
import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from dtgnet.experiments.stats import summarise
from dtgnet.experiments.study import PLANS, Study
from dtgnet.io import write_json_atomic

SHARED = ("data", "prepared", "teachers", "teacher_cache")
STAGES = ("synth", "action_teacher", "prepare", "teacher_cache")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="dotted config overrides applied to every run")
    p.add_argument("--out", required=True)
    p.add_argument("--reuse", help="a study directory whose data, prepared frames and teachers to link")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--entries", nargs="+", default=["scratch", "ssl", "dtg_equal"])
    p.add_argument("--pretrain-epochs", type=int, default=0, help="change the pre-training length")
    p.add_argument("--finetune-lr", type=float, default=0.0)
    p.add_argument("--finetune-head-scale", type=float, default=0.0)
    p.add_argument("--report-test", action="store_true",
                   help="also print test top-1 (mean and 95 %% interval): only for a change already chosen on val")
    p.add_argument("--joint-labelled-only", action="store_true",
                   help="joint entries train on the labelled videos only, with the fine-tune recipe (the study's "
                        "joint entries also train the DTG term on the unlabelled videos)")
    p.add_argument("--joint-epochs", type=int, default=0,
                   help="joint passes over the unlabelled videos (the study's: 12)")
    args = p.parse_args()
    plan = PLANS["full"]
    # the 10 %-label protocol only: a probe compares a change on val, not the study's other protocols
    changes = {"seeds": tuple(args.seeds), "overrides": tuple(args.overrides), "full_label_epochs": 0,
               "video_fractions": ()}
    if args.finetune_lr:
        changes["finetune_lr"] = args.finetune_lr
    if args.finetune_head_scale:
        changes["finetune_head_lr_scale"] = args.finetune_head_scale
    if args.joint_labelled_only:
        changes["joint_unlabelled"] = False
    if args.joint_epochs:
        changes["joint_epochs"] = args.joint_epochs
    if args.pretrain_epochs:
        changes["sizes"] = dataclasses.replace(plan.sizes, pretrain_epochs=args.pretrain_epochs)
    plan = dataclasses.replace(plan, **changes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        src = Path(args.reuse).resolve()
        for name in SHARED:
            if not (out / name).exists():
                (out / name).symlink_to(src / name)
        for stage in STAGES:
            target = out / "records" / f"{stage}.json"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / "records" / f"{stage}.json", target)
    stored = out / "records" / "probe_plan.json"
    if stored.exists() and json.loads(stored.read_text()) != json.loads(json.dumps(plan.describe())):
        raise SystemExit(f"{stored}: this directory probed another change; use a new --out")
    write_json_atomic(stored, plan.describe())
    study = Study(out, plan, progress=False, knn_queries="val")
    study.setup()
    per_entry: dict[str, list[dict]] = {}
    for seed in plan.seeds:
        for name, rec in study.run_seed(seed, only=args.entries).items():
            per_entry.setdefault(name, []).append(rec)
    print(f"plan: {json.dumps(plan.describe())}")
    print(f"{'entry':<14} {'val top-1':>10} {'val kNN':>9} {'val R@1':>9}   per seed (val top-1)")
    for name, recs in per_entry.items():
        v, k, r = (100 * np.mean([x[m] for x in recs]) for m in ("val_top1", "knn", "r1"))
        seeds = ", ".join(f"{100 * x['val_top1']:.1f}" for x in recs)
        print(f"{name:<14} {v:>10.1f} {k:>9.1f} {r:>9.1f}   {seeds}")
    if args.report_test:
        print(f"{'entry':<14} {'test top-1 [95 % interval]':>28}   per seed")
        for name, recs in per_entry.items():
            values = [100 * x["top1"] for x in recs]
            m, (lo, hi) = summarise(values)
            print(f"{name:<14} {m:>10.1f} [{lo:5.1f}, {hi:5.1f}]        {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
