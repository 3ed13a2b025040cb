"""The demo end to end at smoke size (`--smoke`: every stage and the report, three steps per run), as
`make demo` runs the full one."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest


def test_smoke_demo_writes_results_plots_and_report(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "dtgnet", "demo", "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # the reported figures are those of the run directories' students (smoke-sized runs: no level is claimed)
    for name, ckpt, protocol, key in (("dtg", "dtg_finetune", "finetune", "top1"),
                                      ("single_frame", "single_frame", "finetune", "top1"),
                                      ("ssl", "ssl_pretrain", "knn", "knn_top1")):
        evaluated = subprocess.run([sys.executable, "-m", "dtgnet", "eval", "--checkpoint",
                                    str(out / "runs" / ckpt / "student.safetensors"), "--protocol", protocol],
                                   capture_output=True, text=True, timeout=600)
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        assert json.loads(evaluated.stdout)["mean"]["top1"] == pytest.approx(results[name][key]), name
    assert set(results["teacher_weights"]) == {"imagenet", "action"} and results["weighting"] == "adaptive"
    history = json.loads((out / "runs" / "dtg_pretrain" / "metrics.json").read_text())["teacher_weight_history"]
    assert len({tuple(step[1:]) for step in history}) > 1  # the plotted weights move
    assert "retrieval_R@1" in results["dtg"] and "knn_top1" in results["ssl"]
    report = (out / "report.md").read_text()
    assert "DTG pre-train" in report and "single frame" in report
    html = (out / "report.html").read_text()
    assert "one run with one seed" in report and "one run with one seed" in html  # no verdict from one run
    assert html.count("data:image/png;base64") >= 5
    for plot in ("loss_curves", "teacher_weights", "accuracy", "confusion", "embedding"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert run.returncode == 0 and "demo done" in run.stdout
    render_and_check(out / "report.html", tmp_path)


def render_and_check(report, tmp_path):
    """The HTML report as a reader sees it: headless Chromium renders it, and the screenshot must show the
    embedded plots (matplotlib's first two line colours, which only the decoded PNGs hold)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's)")
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars", "--window-size=1100,2600",
                    f"--screenshot={shot}", report.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # (H, W, 3)
    assert pixels.shape[:2] == (2600, 1100)
    for colour in ((31, 119, 180), (255, 127, 14)):  # C0 blue, C1 orange: the curves of the first two plots
        near = (np.abs(pixels - colour).sum(-1) < 40).sum()
        assert near > 200, f"{colour}: {near} pixels; the plots did not render"
