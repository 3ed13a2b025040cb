"""`dtgnet predict`: the same video-level answer as `eval`, a window timeline that switches at a seam, the
outputs (JSON lines, CSV, HTML as a browser shows it) and one line for every kind of bad input."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from dtgnet.cli import main
from dtgnet.config import to_dict
from dtgnet.evaluation import eval_dataset, extract
from dtgnet.students import build_student, checkpoint_config, load_student, save_student_safetensors
from tests.conftest import COLOURS, stitched, tiny_cfg
from tests.data.test_awkward_files import awkward  # noqa: F401  (the fixture)


def predict(capsys, *args) -> tuple[int, list[dict], str]:
    code = main(["predict", *map(str, args), "--no-progress", "--workers", "1"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_video_level_predictions_are_evals(colours, colour_student, capsys):
    code, records, _ = predict(capsys, colour_student, colours / "test.txt", "--top-k", "2")
    assert code == 0 and len(records) == 6
    cfg = checkpoint_config(colour_student)
    model = load_student(colour_student)
    ref = extract(model, eval_dataset(cfg, "test", model.temporal), "cpu")
    ref_probs = ref["logits"].softmax(-1).mean(1)  # (N, K): eval's video-level score
    for r, probs, label in zip(records, ref_probs, ref["labels"]):
        ours = {t["class"]: t["prob"] for t in r["top"]}
        assert r["top"][0]["class"] == COLOURS[int(probs.argmax())]
        # the frames come through the streaming decoder (scaled inside it) instead of eval's seeking reader
        assert [ours[c] for c in COLOURS] == pytest.approx(probs.tolist(), abs=0.02)
        assert r["duration"] == pytest.approx(1.0) and r["frames"] == 10
    assert np.mean([r["top"][0]["class"] == COLOURS[int(y)] for r, y in zip(records, ref["labels"])]) >= 5 / 6


def test_a_window_timeline_switches_class_at_the_seam(colour_student, tmp_path, capsys):
    video = stitched(tmp_path / "red_then_blue.mp4")
    code, (r,), _ = predict(capsys, colour_student, video, "--window", "1", "--stride", "0.5")
    assert code == 0 and r["duration"] == pytest.approx(8.0)
    wins = r["windows"]
    assert len(wins) == 15 and wins[0]["start"] == 0 and wins[-1]["end"] == pytest.approx(8.0)
    top = [w["top"][0]["class"] for w in wins]
    assert top[0] == "red" and top[-1] == "blue"
    switches = [i for i in range(1, len(top)) if top[i] != top[i - 1]]
    assert len(switches) == 1, top
    seam = wins[switches[0]]
    assert 3.0 <= seam["start"] <= 4.0, (seam, top)  # the first window led by blue holds the seam or follows it


def test_csv_and_an_html_report_a_browser_shows(colour_student, tmp_path, capsys):
    video = stitched(tmp_path / "red_then_blue.mp4")
    html, out = tmp_path / "report.html", tmp_path / "p.csv"
    code = main(["predict", str(colour_student), str(video), "--window", "1", "--out", str(out), "--html", str(html),
                 "--no-progress", "--workers", "0"])
    assert code == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "path,start,end,rank,class,prob,error" and len(rows) == 1 + 8 * 2
    page = html.read_text()
    assert "http" not in page.replace("http-equiv", "") and page.count("data:image/jpeg;base64,") == 8
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's)")
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'c'}",
                    "--hide-scrollbars", "--window-size=900,700", f"--screenshot={shot}", html.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # (H, W, 3)
    # the thumbnails (red and blue scenes) and both class curves (the plot's first two colours) are on screen
    for colour, least in (((31, 119, 180), 150), ((255, 127, 14), 150)):
        assert (np.abs(pixels - colour).sum(-1) < 40).sum() > least, colour
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 110)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 110)
    assert red.sum() > 2000 and blue.sum() > 2000


def test_bad_inputs_are_one_line_with_the_right_status(colours, colour_student, video_dir, tmp_path, capsys):
    pretrained = tmp_path / "pretrained.safetensors"
    cfg = tiny_cfg(colours, tmp_path / "unused")
    save_student_safetensors(build_student(cfg, {"imagenet": 16}), pretrained,
                             {"config": to_dict(cfg), "mode": "pretrain", "teacher_heads": {"imagenet": 16},
                              "num_classes": 0, "self_head": True})
    code, _, err = predict(capsys, pretrained, colours / "test.txt")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no classifier" in err and "dtgnet embed" in err and "--zero-shot" in err
    (tmp_path / "empty").mkdir()
    for args, says in (([tmp_path / "missing.mp4"], "missing.mp4: no such file or folder"),
                       ([tmp_path / "empty"], "empty: folder holds no videos"),
                       ([colours / "test.txt", "--window", "-1"], "--window must be >= 0")):
        code, records, err = predict(capsys, colour_student, *args)
        lines = err.strip().splitlines()
        assert code == 2 and records == [] and len(lines) == 1
        assert lines[0].startswith("dtgnet: error: ") and says in lines[0]
    code, _, err = predict(capsys, tmp_path / "nothing.pt", colours / "test.txt")
    assert code == 2 and "nothing.pt: no such checkpoint" in err
    # unreadable files: a result with its reason each, one stderr line each, status 1; the good ones answered
    code, records, err = predict(capsys, colour_student, video_dir)
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in records}
    assert code == 1 and len(records) == 7
    assert {n for n, r in by_name.items() if "error" in r} == {"empty.mp4", "truncated.mp4", "garbage.mp4"}
    assert "empty file" in by_name["empty.mp4"]["error"]
    assert all(len(r["top"]) == 2 for r in records if "error" not in r)
    assert sorted(line.split(": ")[1].rsplit("/", 1)[1] for line in err.splitlines() if line.startswith("dtgnet: ")) == \
        ["empty.mp4", "garbage.mp4", "truncated.mp4"]


def test_awkward_files_each_get_a_result_or_a_reason(awkward, colour_student, capsys):  # noqa: F811
    root, good, bad = awkward
    code, records, _ = predict(capsys, colour_student, root, "--window", "0.2")
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in records}
    assert code == 1 and set(by_name) == set(good) | set(bad) - {"audio_only.m4a"}  # .m4a is not a video suffix
    for name in good:
        assert "error" not in by_name[name] and by_name[name]["windows"], name
    for name, reason in bad.items():
        if name in by_name:
            assert reason in by_name[name]["error"], name


def test_an_older_file_without_class_names_gets_indices_and_a_warning(colour_student, colours, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(colour_student), "pt") as fh:
        meta = json.loads(fh.metadata()["dtgnet"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    del meta["classes"]
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), {"dtgnet": json.dumps(meta)})
    with pytest.warns(UserWarning, match="no class names; classes are given as indices"):
        code, records, _ = predict(capsys, old, colours / "test" / "red_0.mp4")
    assert code == 0 and {t["class"] for t in records[0]["top"]} == {"0", "1"}
    assert torch.equal(load_student(old).classifier[-1].weight, load_student(colour_student).classifier[-1].weight)
