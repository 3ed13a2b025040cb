"""`student.mask_ratio`: step time and memory of masked pre-training against the unmasked step, for the same
ViT student, frames and batch (ViT-S at 16 frames of 112² by default).

    python benchmarks/masking.py [--batch 8] [--ratios 0 0.5 0.75 0.9] [--frames 16] [--size 112] [--steps 3]
                                 [--arch vit_s] [--json F]

Three objectives, each at every ratio, each setting in its own process on SynthActions videos:

* ``student only``: the self term alone (no teacher): what masking saves in the student itself;
* ``clip DTG``: the paper's clip-level terms with the bundled EfficientNet-Lite0 teacher online;
* ``clip DTG + tokens``: the same with masked token distillation (``loss.token_weight=1``), the teacher's
  tokens of each tubelet's first frame computed online beside its clip embedding;
* ``clip DTG + cached tokens``: the same from a teacher cache built before the steps (``run.teacher_cache``,
  ``run.token_cache_grid=7``): no teacher runs in the step.

The online teacher's cost does not fall with the ratio (it sees every frame), so the middle two show how much
of a real step masking removes. Step time: the fastest of ``--steps`` after the first; memory as in
``benchmarks/micro_batch.py`` (peak resident set, and its rise over the steps; on a GPU, the device's).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from micro_batch import describe, one_setting, student_overrides, write_videos  # noqa: E402  (the same measurement)

OBJECTIVES = {"student only": ["teachers=[]"], "clip DTG": [], "clip DTG + tokens": ["loss.token_weight=1"],
              "clip DTG + cached tokens": ["loss.token_weight=1", "run.teacher_cache=true", "run.token_cache_grid=7"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--arch", default="vit_s")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_setting(args.child[0], json.loads(args.child[1]), args.steps)))
        return {}
    common = student_overrides(args)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        write_videos(work, args)
        for objective in args.objectives:
            rows = results[objective] = {}
            for ratio in args.ratios:
                overrides = common + OBJECTIVES[objective] + [f"student.mask_ratio={ratio}"]
                run = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", work,
                                      json.dumps(overrides)], capture_output=True, text=True)
                if run.returncode:
                    raise SystemExit(f"{overrides}: {run.stderr[-2000:]}")
                r = rows[str(ratio)] = json.loads(run.stdout.strip().splitlines()[-1])
                r["time_vs_unmasked"] = round(r["step_s"] / rows[str(args.ratios[0])]["step_s"], 3)
                print(f"{objective:18s} mask {ratio:4.2f}: step {r['step_s']:7.3f} s ({r['time_vs_unmasked']:.2f}x)"
                      f"   {describe(r)}", flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "child"}
    report = {"settings": settings, "machine": platform.platform(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
