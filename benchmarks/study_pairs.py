"""Paired per-seed comparisons and seed spreads from a study's ``study.json``, beyond the targets study.md checks.

    python benchmarks/study_pairs.py docs/results/study.json dtg_adaptive-ssl dtg_e64-ssl_e64:knn
    python benchmarks/study_pairs.py docs/results/study.json --spread scratch ssl dtg_e64

A comparison is ``A-B`` or ``A-B:METRIC`` (top1, knn or r1): the mean of the per-seed differences A - B with its
95 % interval, over the seeds both entries have (the same statistic as the targets). ``--spread`` prints each
named entry's standard deviation and range across seeds.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

from dtgnet.experiments.stats import seed_differences, summarise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_json", type=Path)
    parser.add_argument("comparisons", nargs="*", metavar="A-B[:METRIC]")
    parser.add_argument("--spread", nargs="+", default=[], metavar="ENTRY")
    args = parser.parse_args(argv)
    study = json.loads(args.study_json.read_text())
    for spec in args.comparisons:
        pair, _, metric = spec.partition(":")
        a, sep, b = pair.partition("-")
        metric = metric or "top1"
        unknown = [n for n in (a, b) if n not in study]
        if not sep or unknown or metric not in ("top1", "knn", "r1"):
            sys.exit(f"study_pairs: cannot read {spec!r}: want A-B[:top1|knn|r1] with entries of "
                     f"{args.study_json}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        diffs = seed_differences(study, a, b, metric)
        mean, (lo, hi) = summarise(diffs)
        print(f"{a} - {b} ({metric}): {mean:+.1f} [{lo:+.1f}, {hi:+.1f}], {len(diffs)} seeds: "
              + ", ".join(f"{d:+.1f}" for d in diffs))
    for name in args.spread:
        if name not in study:
            sys.exit(f"study_pairs: no entry {name!r} in {args.study_json}")
        if len(study[name]["top1_seeds"]) < 2:
            sys.exit(f"study_pairs: {name!r} has a single run in {args.study_json}: no spread across seeds")
        for metric in ("top1", "knn"):
            xs = study[name][f"{metric}_seeds"]
            print(f"{name} {metric}: SD {statistics.stdev(xs):.1f}, range {min(xs):.1f}-{max(xs):.1f}, "
                  f"{len(xs)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
