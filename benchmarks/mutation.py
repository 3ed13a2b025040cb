"""Mutation testing (mutmut) of the modules the project's correctness rests on, each against its own tests.

    python benchmarks/mutation.py [--modules losses weighting ...] [--json F]     (or: make mutation)

For each module, a copy of the working tree gets a ``[tool.mutmut]`` section naming the module and its test
files, and ``mutmut run`` mutates the module's code (operators, constants, arguments, keywords ...) and runs the
tests that reach each mutant. A mutant is *killed* when a test fails (or it times out), and *survives* when
every test passes. Prints the score (killed / all) per module against its target and each survivor's diff;
docs/CONTRIBUTING.md says which survivors are equivalent mutants (no test can tell them apart).
Needs ``pip install mutmut`` (3.x); the tests run with one torch thread (``DTGNET_TEST_THREADS=1``): mutmut
forks, and a forked OpenMP pool deadlocks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "losses": ("dtgnet/objectives/losses.py", ["tests/objectives/test_losses.py"], 0.90),
    "weighting": ("dtgnet/objectives/weighting.py", ["tests/objectives/test_weighting.py"], 0.90),
    "checkpoint": ("dtgnet/training/checkpoint.py", ["tests/training/test_checkpoint.py"], 0.80),
    "samplers": ("dtgnet/data/samplers.py", ["tests/data/test_samplers.py"], 0.80),
    "run_state": ("dtgnet/training/run_state.py", ["tests/training/test_run_state.py"], 0.80),
}
KILLED = ("killed", "timeout", "segfault")


def tree_copy(dest: Path) -> None:
    """The working tree's files that git knows or would add (no .venv, no run outputs)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_module(name: str, work: Path) -> dict:
    module, tests, target = MODULES[name]
    project = work / name
    tree_copy(project)
    with open(project / "pyproject.toml", "a") as fh:
        fh.write(f"\n[tool.mutmut]\nsource_paths = [{json.dumps(module)}]\n"
                 f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
                 f'also_copy = ["dtgnet/", "tests/"]\n')
    env = {**os.environ, "DTGNET_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run(mutmut + ["run"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listing = subprocess.run(mutmut + ["results", "--all", "true"], cwd=project, env=env, capture_output=True,
                             text=True).stdout
    status = {}
    for line in listing.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key.startswith("dtgnet."):
            status[key] = value
    survivors = {}
    for mutant, value in status.items():
        if value not in KILLED:
            shown = subprocess.run(mutmut + ["show", mutant], cwd=project, env=env, capture_output=True, text=True).stdout
            survivors[mutant] = [line for line in shown.splitlines()
                                 if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    killed = sum(1 for v in status.values() if v in KILLED)
    return {"module": module, "tests": tests, "mutants": len(status), "killed": killed,
            "score": killed / max(len(status), 1), "target": target, "survivors": survivors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES))
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="dtgnet-mutation-") as tmp:
        for name in args.modules:
            r = results[name] = run_module(name, Path(tmp))
            mark = "met" if r["score"] >= r["target"] else "MISSED"
            print(f"{name:10s} {r['killed']:4d} / {r['mutants']:4d} killed = {r['score']:.1%} (target {r['target']:.0%}: "
                  f"{mark})", flush=True)
            for mutant, diff in r["survivors"].items():
                print(f"    survived {mutant}: " + " | ".join(d.strip() for d in diff))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if any(r["score"] < r["target"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
