"""`dtgnet study`: the statistics, the val-only choices, and the quick study end to end (about 3 minutes on
2 CPU cores), including resume and the errors a user can make."""
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtgnet.cli import main
from dtgnet.errors import EXIT_PREEMPTED, DtgError
from dtgnet.experiments.reports import entry_colour
from dtgnet.experiments.stats import (
    appearance_ratio,
    best_on_val,
    check_targets,
    entry_stats,
    grid_name,
    label_gap_share,
    paired,
    summarise,
    token_name,
)
from dtgnet.experiments.study import PLANS, SIDE_ENTRIES, entry_names, run_study, same_steps
from dtgnet.io import load_checkpoint
from dtgnet.training.runlog import read_log
from tests.conftest import signal_in_step

KEYS = [f"{m}_{k}" for m in ("top1", "knn", "r1") for k in ("mean", "ci95", "seeds")]


def dtgnet(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dtgnet", *args], capture_output=True, text=True, timeout=timeout)


def test_summarise_is_the_student_t_interval():
    values = [40.0, 45.0, 53.0]
    m, (lo, hi) = summarise(values)
    sd = math.sqrt(sum((v - np.mean(values)) ** 2 for v in values) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2} from a table
    assert m == pytest.approx(46.0) and lo == pytest.approx(46.0 - half) and hi == pytest.approx(46.0 + half)
    assert summarise([12.5]) == (12.5, [12.5, 12.5])


def test_entry_stats_shape_and_percent():
    seeds = {"0": {"top1": 0.5, "knn": 0.25, "r1": 0.75}, "1": {"top1": 0.6, "knn": 0.35, "r1": 0.7}}
    e = entry_stats(seeds)
    assert sorted(e) == sorted(KEYS)
    assert e["top1_seeds"] == [50.0, 60.0] and e["top1_mean"] == 55.0 and e["knn_mean"] == 30.0


def test_best_on_val_ignores_test():
    per_seed = {"a": {"0": {"val_top1": 0.6, "top1": 0.1}}, "b": {"0": {"val_top1": 0.4, "top1": 0.9}}}
    best, val = best_on_val(per_seed, ["a", "b"])
    assert best == "a" and val == {"a": 0.6, "b": 0.4}
    per_seed["b"]["1"] = {"val_top1": 0.9}  # a seed "a" does not have: not part of the comparison
    assert best_on_val(per_seed, ["a", "b"]) == ("a", {"a": 0.6, "b": 0.4})


def test_check_targets():
    def entry(m, knn=0.0, n=5, spread=1.0):
        seeds = [m + spread * (i - (n - 1) / 2) for i in range(n)]
        return {"top1_mean": m, "top1_seeds": seeds, "knn_mean": knn, "knn_seeds": [knn + s - m for s in seeds]}

    study = {"scratch": entry(30), "ssl": entry(40, knn=30), "dtg_x": entry(46, knn=45),
             "dtg_adaptive": entry(44), "dtg_best_fixed": entry(45.5, n=3), "supervised": entry(30),
             "joint_dtg": entry(32), "vit_ssl": entry(30, n=3), "vit_dtg": entry(31, n=3),
             "scratch_full": entry(50), "dtg_full": entry(54), "dtg_1of4": entry(41, knn=29),
             "teacher_knn_a": entry(38, knn=38, n=1), "teacher_knn_b": entry(39, knn=39.5, n=1)}
    targets = check_targets(study, "dtg_x")
    met = {t["target"]: t["met"] for t in targets}
    assert met == {"dtg_x >= scratch + 15": True, "dtg_x >= ssl + 5": True,
                   "dtg_x closes >= 50 % of the label gap (scratch -> scratch_full)": True,
                   "dtg_x kNN >= the best teacher's kNN (teacher_knn_b) + 5": True,
                   "dtg_full >= scratch_full + 3 (100 % of the labels)": True,
                   "dtg_1of4 >= ssl on every video (kNN)": False, "dtg_1of4 >= ssl on every video (top-1)": True,
                   "joint_dtg >= supervised + 3 (the better supervised recipe on val)": False, "dtg_adaptive >= dtg_best_fixed - 1": False,
                   "vit_dtg >= vit_ssl (the method carries over to a ViT student)": True}
    by_name = {t["target"]: t for t in targets}
    against_scratch = {t["target"]: t for t in check_targets(study, "dtg_x", "scratch")}
    assert against_scratch["joint_dtg >= scratch + 3 (the better supervised recipe on val)"]["gap"] == 2.0
    assert by_name["dtg_x >= scratch + 15"]["paired_ci95"] == [16.0, 16.0]  # the same offset every seed
    assert by_name["dtg_x closes >= 50 % of the label gap (scratch -> scratch_full)"]["gap"] == 80.0
    assert by_name["dtg_adaptive >= dtg_best_fixed - 1"]["seeds"] == 3  # the seeds both entries have
    assert by_name["dtg_x kNN >= the best teacher's kNN (teacher_knn_b) + 5"]["gap"] == 5.5  # one run, every seed
    # +6 points on average, but the seeds disagree: the paired interval includes 0
    study["ssl"] = {**entry(40), "top1_seeds": [40 + d for d in (-10, 8, -9, 9, 2)]}
    assert not {t["target"]: t for t in check_targets(study, "dtg_x")}["dtg_x >= ssl + 5"]["met"]
    study["ssl_e64"] = entry(30)  # DTG held against another SSL schedule (the better on val)
    assert {t["target"]: t for t in check_targets(study, "dtg_x", ssl="ssl_e64")}["dtg_x >= ssl_e64 + 5"]["met"]
    # one seed (an interim report): a large gap, but no interval to exclude 0
    one = {name: {k: v[:1] if k.endswith("_seeds") else v for k, v in e.items()} for name, e in study.items()}
    by_name = {t["target"]: t for t in check_targets(one, "dtg_x")}
    assert by_name["dtg_x >= scratch + 15"]["gap"] >= 15 and not by_name["dtg_x >= scratch + 15"]["met"]


def test_fewer_videos_train_as_many_steps():
    # 480 videos at batch 24: 20 steps an epoch, 320 in 16 epochs; 60 videos give 2 whole batches an epoch
    assert same_steps(16, 24, 480, 60, 0) == (160, 320)
    assert same_steps(16, 24, 480, 240, 0) == (32, 320)
    assert same_steps(1, 16, 32, 16, 2) == (2, 2)  # an existing cap is kept


def test_paired_differences_and_the_label_gap_share():
    study = {"a": {"top1_seeds": [50.0, 52.0, 54.0], "top1_mean": 52.0},
             "b": {"top1_seeds": [40.0, 43.0], "top1_mean": 41.5}}
    m, (lo, hi), n = paired(study, "a", "b")
    assert n == 2 and m == pytest.approx(9.5) and lo < 9.5 < hi  # diffs 10 and 9
    study.update(scratch={"top1_mean": 40.0}, scratch_full={"top1_mean": 60.0})
    assert label_gap_share(study, "a") == pytest.approx(60.0)
    study["scratch_full"]["top1_mean"] = 39.0  # full labels no better: no gap to close
    assert label_gap_share(study, "a") is None


def test_entry_names_cover_the_issue():
    names = entry_names(PLANS["full"])
    for n in ("scratch", "ssl", "dtg_imagenet", "dtg_action", "dtg_equal", "dtg_best_fixed", "dtg_learned",
              "dtg_adaptive", "supervised", "joint_dtg", "single_frame", "teacher_knn_imagenet",
              "teacher_knn_action", "vit_ssl", "vit_dtg", "scratch_full", "ssl_full", "dtg_full", "ssl_1of8",
              "dtg_1of8", "ssl_1of4", "dtg_1of4", "ssl_1of2", "dtg_1of2", "ssl_e64", "dtg_e64", "single_frame_full",
              "scratch_init", "ssl_init", "dtg_init", "vit_token_m50", "vit_token_m75", "vit_token_m90", "vit_token",
              "vit_dtg_token", "vit_dtg_masked", "dtg_video"):
        assert n in names
    assert len(set(names)) == len(names)
    assert "dtg_e64" not in entry_names(dataclasses.replace(PLANS["full"], long_pretrain_epochs=0))


def test_the_plot_colours_every_entry_by_its_family():
    colour = {n: entry_colour(n) for n in entry_names(PLANS["ucf_like_full"])}
    guided = {n for n in colour if n.startswith(("dtg", "joint", "vit_dtg", "vit_token"))}
    unlabelled_only = {"ssl", "ssl_e64", "ssl_1of4", "vit_ssl", "ssl_init"}
    assert {colour[n] for n in guided} == {"#e63"} and {colour[n] for n in unlabelled_only} == {"#69c"}
    assert colour["scratch"] == colour["supervised"] == colour["single_frame"] == "#999"
    assert colour["teacher_knn_action"] == "#bbb"


def test_ucf_like_plan_runs_what_its_comparison_needs():
    plan = PLANS["ucf_like_full"]
    names = entry_names(plan)
    assert plan.design == "ucf_like" and set(plan.entries) <= set(names)
    for n in ("scratch", "ssl_e64", "dtg_e64", "scratch_full", "single_frame", "single_frame_full", "dtg_1of4",
              "ssl_1of4", "joint_dtg", "supervised", "teacher_knn_imagenet", "teacher_knn_action", "vit_dtg"):
        assert n in names
    assert not {"dtg_best_fixed", "dtg_learned", "ssl_full", "dtg_full", "dtg_1of8"} & set(names)
    # a derived entry brings the run it derives from; the weight-grid's best point comes with the grid
    some = entry_names(dataclasses.replace(PLANS["full"], entries=("dtg_full", "dtg_equal")))
    assert some == ["dtg_equal", "dtg_best_fixed", "dtg_adaptive", "dtg_full"]
    with pytest.raises(DtgError, match="unknown study entries: dtg_e32"):
        entry_names(dataclasses.replace(plan, entries=("scratch", "dtg_e32")))


def test_targets_and_ratio_of_a_partial_study():
    def entry(m, n=3):
        return {"top1_mean": m, "top1_seeds": [m - 1.0, m, m + 1.0][:n], "knn_mean": m,
                "knn_seeds": [m - 1.0, m, m + 1.0][:n]}

    calibration = {"scratch_full": entry(70.0), "single_frame_full": entry(56.0)}
    assert check_targets(calibration, None, None, None) == []  # nothing to compare yet, nothing claimed
    ratio = appearance_ratio(calibration)
    assert ratio["seeds"] == [round(55 / 69, 3), 0.8, round(57 / 71, 3)] and ratio["in_range"]
    assert ratio["ci95"][0] < ratio["mean"] < ratio["ci95"][1]
    assert not appearance_ratio({**calibration, "single_frame_full": entry(25.0)})["in_range"]
    assert appearance_ratio({"scratch_full": entry(70.0)}) is None
    partial = {"scratch": entry(40.0), "dtg_e64": entry(60.0), "teacher_knn_a": entry(30.0, n=1)}
    assert [t["target"] for t in check_targets(partial, "dtg_e64", None, None)] == [
        "dtg_e64 >= scratch + 15", "dtg_e64 kNN >= the best teacher's kNN (teacher_knn_a) + 5"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "quick"
    run = dtgnet("study", "--quick", "--out", str(out), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_quick_study_writes_every_entry(quick_study):
    out, run = quick_study
    study = json.loads((out / "study.json").read_text())
    assert list(study) == entry_names(PLANS["quick"])
    n_test = len((out / "data" / "test.txt").read_text().splitlines())

    def an_accuracy_over_the_test_videos(percent: float) -> bool:  # k of n_test, as study.json rounds it
        hits = percent * n_test / 100
        return 0 <= percent <= 100 and abs(hits - round(hits)) <= 0.005 * n_test / 100 + 1e-9

    probed = {"vit_ssl", "vit_dtg", "vit_token_m75", "vit_token", "vit_dtg_token", "vit_dtg_masked"}
    probe_keys = [f"{p}_{k}" for p in ("linear_probe", "attentive_probe") for k in ("mean", "ci95", "seeds")]
    plan = PLANS["quick"]  # side entries (and what is chosen among them) run the first seed only
    side = {*SIDE_ENTRIES, "dtg_best_fixed", "vit_token", *(grid_name(w) for w in plan.grid),
            *(token_name(r) for r in plan.token_ratios)}
    for name, e in study.items():
        assert sorted(e) == sorted(KEYS + (probe_keys if name in probed else [])), name
        n = 1 if name.startswith("teacher_knn_") or name in side else len(PLANS["quick"].seeds)
        for metric in ("top1", "knn", "r1"):
            seeds, (lo, hi) = e[f"{metric}_seeds"], e[f"{metric}_ci95"]
            assert len(seeds) == n and all(an_accuracy_over_the_test_videos(v) for v in seeds), (name, metric, seeds)
            assert lo <= e[f"{metric}_mean"] <= hi
    meta = json.loads((out / "runs.json").read_text())
    assert study["dtg_best_fixed"] == study[meta["best_fixed"]]
    assert meta["best_fixed"] == max(meta["grid_val_top1"], key=meta["grid_val_top1"].get)
    assert study["vit_token"] == study[meta["best_token"]] and meta["best_token"] == "vit_token_m75"
    assert len(meta["targets"]) == 19 and meta["command"].startswith("dtgnet study --quick")
    assert set(meta["side_entries"]) == side
    # dtg_video's teacher, dtg_e2's student, outlives its scoring; the other students do not
    kept = {p.parent.name for p in out.glob("runs/*/student.safetensors")}
    assert kept == {"dtg_e2_s0_pretrain", "dtg_e2_s1_pretrain"}
    md = (out / "study.md").read_text()
    for text in ("Command: `dtgnet study --quick", "Machine:", "Wall time:", "| dtg_adaptive |",
                 "Teacher-weight grid", "(chosen)", "## Data efficiency", "## Targets", "| scratch_full |",
                 "## Frozen students: linear and attentive probes", "| vit_dtg_token |", "## Wall time per entry",
                 "| dtg_video |", "best vit_token_mNN on val: vit_token_m75",
                 f"Seeds: 0, 1 for the headline entries, the first 1 for {', '.join(meta['side_entries'])}; full"):
        assert text in md
    assert (out / "study.png").stat().st_size > 5000 and (out / "study_efficiency.png").stat().st_size > 5000
    assert len(list((out / "lists").glob("train_videos_1of2_s*.txt"))) == 2
    assert not list(out.glob("runs/*/checkpoints")), "scored runs keep no checkpoints"
    assert "study done" in run.stdout and ("missed" in run.stdout or "met" in run.stdout)


def test_resume_reuses_every_record(quick_study):
    out, _ = quick_study
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    study = (out / "study.json").read_text()
    run = dtgnet("study", "--quick", "--out", str(out), "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")} == before
    assert (out / "study.json").read_text() == study


def test_interim_report_uses_the_finished_seeds_and_trains_nothing(quick_study, tmp_path):
    out, _ = quick_study
    partial = tmp_path / "partial"
    shutil.copytree(out / "records", partial / "records")  # a study whose seed 1 is still running
    next(partial.glob("records/joint_dtg_s1.json")).unlink()
    records = sorted(p.name for p in partial.glob("records/*.json"))
    run = dtgnet("study", "--quick", "--out", str(partial), "--interim")
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in partial.glob("records/*.json")) == records and not (partial / "runs").exists()
    study = json.loads((partial / "study.json").read_text())
    assert list(study) == entry_names(PLANS["quick"])
    assert all(len(e["top1_seeds"]) == 1 for e in study.values())
    assert study["ssl"]["top1_seeds"] == json.loads((out / "study.json").read_text())["ssl"]["top1_seeds"][:1]
    assert json.loads((partial / "runs.json").read_text())["interim_seeds"] == [0]
    assert "**Interim report**: seeds 0 of 0, 1" in (partial / "study.md").read_text()
    assert "interim report on seeds 0" in run.stdout
    for name in ("joint_dtg_s0.json", "teacher_cache.json"):  # no finished seed, no set-up: nothing to report
        (partial / "records" / name).unlink()
        run = dtgnet("study", "--quick", "--out", str(partial), "--interim")
        assert run.returncode == 2 and "nothing to report yet" in run.stderr and "Traceback" not in run.stderr
    run = dtgnet("study", "--quick", "--out", str(partial), "--interim", "--resume")
    assert run.returncode == 2 and "--interim" in run.stderr


def test_a_study_planned_without_the_long_schedule_still_reports(quick_study, tmp_path):
    """The long schedule only adds entries: a study planned before it resumes and reports under its plan."""
    out, _ = quick_study
    older = tmp_path / "older"
    shutil.copytree(out / "records", older / "records")
    plan = json.loads((older / "records" / "plan.json").read_text())
    del plan["long_pretrain_epochs"]
    (older / "records" / "plan.json").write_text(json.dumps(plan))
    for name in PLANS["quick"].long_names():
        for record in older.glob(f"records/{name}_s*.json"):
            record.unlink()
    run = dtgnet("study", "--quick", "--out", str(older), "--interim")
    assert run.returncode == 0, run.stderr[-3000:]
    study = json.loads((older / "study.json").read_text())
    assert list(study) == entry_names(dataclasses.replace(PLANS["quick"], long_pretrain_epochs=0))
    assert json.loads((older / "runs.json").read_text())["ssl_baseline"] == "ssl"


def test_a_preempted_study_continues_its_run_from_the_checkpoint(quick_study, tmp_path, monkeypatch, capsys):
    """SIGUSR1 in the first step of ssl_s0's pre-training stops the study with that step's checkpoint; the
    resumed study continues the run from it, gives the uninterrupted record and counts both attempts' time."""
    out, _ = quick_study
    study = tmp_path / "study"
    shutil.copytree(out, study, ignore=shutil.ignore_patterns(".lock"))
    (study / "records" / "ssl_s0.json").unlink()
    signal_in_step(monkeypatch, 1)
    assert main(["study", "--quick", "--out", str(study), "--resume"]) == EXIT_PREEMPTED
    printed = capsys.readouterr().err
    assert "SIGUSR1 at step 1" in printed and f"`dtgnet study --out {study} --resume --quick`" in printed
    run = study / "runs" / "ssl_s0_pretrain"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1
    spent = float((study / "records" / "ssl_s0.spent").read_text())
    assert spent > 0
    monkeypatch.undo()  # the loss without the signal
    run_study(study, quick=True, resume=True, progress=False)
    assert [r["step"] for r in read_log(run / "log.jsonl") if r.get("event") == "resume"] == [1]
    resumed, uninterrupted = (json.loads((d / "records" / "ssl_s0.json").read_text()) for d in (study, out))
    assert resumed["result"] == uninterrupted["result"]
    assert resumed["seconds"] > spent and not (study / "records" / "ssl_s0.spent").exists()


def test_user_mistakes_are_one_line_errors(quick_study, tmp_path):
    out, _ = quick_study
    run = dtgnet("study", "--quick", "--out", str(out), "--resume", "loss.tau=0.2")
    assert run.returncode == 2 and "another plan" in run.stderr and "Traceback" not in run.stderr
    run = dtgnet("study", "--quick", "--out", str(out))
    assert run.returncode == 2 and "--force" in run.stderr
    fresh = tmp_path / "new"
    run = dtgnet("study", "--quick", "--out", str(fresh), "loss.tau=-1")
    assert run.returncode == 2 and "loss.tau" in run.stderr and not fresh.exists()
    run = dtgnet("study", "--quick", "--out", str(fresh), "--resume")
    assert run.returncode == 2 and "no study to resume" in run.stderr


def test_study_pairs_script_prints_paired_differences_and_spreads(tmp_path):
    study = {"dtg": {"top1_seeds": [50.0, 46.0, 52.0], "knn_seeds": [55.0, 51.0, 54.0]},
             "ssl": {"top1_seeds": [45.0, 44.0, 49.0], "knn_seeds": [50.0, 52.0, 47.0]},
             "teacher": {"top1_seeds": [40.0], "knn_seeds": [40.0]}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    script = [sys.executable, str(Path(__file__).parents[2] / "benchmarks" / "study_pairs.py"), str(path)]
    out = subprocess.run(script + ["dtg-ssl", "dtg-teacher:knn", "--spread", "ssl"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    diffs = [5.0, 2.0, 3.0]
    half = 4.303 * np.std(diffs, ddof=1) / math.sqrt(3)  # Student-t, 2 degrees of freedom
    assert out[0] == (f"dtg - ssl (top1): +{np.mean(diffs):.1f} [{np.mean(diffs) - half:+.1f}, "
                      f"{np.mean(diffs) + half:+.1f}], 3 seeds: +5.0, +2.0, +3.0")
    assert out[1].startswith("dtg - teacher (knn): +13.3 ") and out[1].endswith("3 seeds: +15.0, +11.0, +14.0")
    assert out[2] == "ssl top1: SD 2.6, range 44.0-49.0, 3 seeds"
    for args, message in ((["dtg-nope"], "unknown: nope"), (["--spread", "teacher"], "single run")):
        bad = subprocess.run(script + args, capture_output=True, text=True)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr


def test_ucf_like_quick_study_calibrates_first_then_grows(tmp_path):
    """The UCF101-like design end to end at smoke size: first the calibration pair alone (no teacher-guided
    run exists yet), then the same study resumed with more entries trains those and keeps the first records."""
    from dtgnet.data.synth import UCF_LIKE

    out = tmp_path / "ucf"
    calibrate = "scratch_full,single_frame_full"
    run = dtgnet("study", "--quick", "--preset", "ucf_like", "--out", str(out), "--entries", calibrate)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "data" / "classes.txt").read_text().split() == [c.name for c in UCF_LIKE[:4]]
    assert list(json.loads((out / "study.json").read_text())) == ["scratch_full", "single_frame_full"]
    meta = json.loads((out / "runs.json").read_text())
    assert meta["data"]["design"] == "ucf_like" and meta["data"]["preset"] == "ucf_like_smoke"
    assert len(meta["appearance_ratio"]["seeds"]) == 2 and meta["targets"] == []
    assert "## How much one frame knows" in (out / "study.md").read_text()
    assert not [p for p in (out / "records").glob("*dtg*")]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")
              if p.name not in ("plan.json", "command.json")}

    run = dtgnet("study", "--quick", "--out", str(out), "--resume", "--entries", calibrate)
    assert run.returncode == 2 and "another plan" in run.stderr  # the twins design is another study
    run = dtgnet("study", "--quick", "--preset", "ucf_like", "--out", str(out), "--resume", "--entries",
                 calibrate + ",scratch,dtg_e2,teacher_knn_imagenet")
    assert run.returncode == 0, run.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json") if p.name in before} == before
    assert list(json.loads((out / "study.json").read_text())) == [
        "scratch", "dtg_e2", "scratch_full", "single_frame_full", "teacher_knn_imagenet"]
    assert "dtg_e2 >= scratch + 15" in run.stdout
    command = next(line for line in (out / "study.md").read_text().splitlines() if line.startswith("- Command"))
    assert f"--entries {calibrate}`; entries added by `dtgnet study --quick --preset ucf_like" in command


def test_the_mask_ratio_is_chosen_on_the_first_seed_and_only_it_runs_again(tmp_path):
    from dtgnet.experiments.study import Study

    plan = dataclasses.replace(PLANS["quick"], side_seeds=2, token_ratios=(0.5, 0.75, 0.9))
    study = Study(tmp_path, plan, progress=False)
    study.action = {"path": "action.safetensors"}
    tokens = {"vit_token_m50", "vit_token_m75", "vit_token_m90"}
    assert tokens <= set(study._jobs(0)) and not tokens & set(study._jobs(1))  # not chosen yet: none
    records = tmp_path / "records"
    records.mkdir()
    for name, val in (("vit_token_m50", 0.3), ("vit_token_m75", 0.5), ("vit_token_m90", 0.4)):
        (records / f"{name}_s0.json").write_text(json.dumps({"seconds": 1, "result": {"val_top1": val}}))
    assert study.chosen_token_entry() == "vit_token_m75"
    assert tokens & set(study._jobs(1)) == {"vit_token_m75"} and tokens <= set(study._jobs(0))
