import json
import subprocess
import sys

import numpy as np
import pytest

from dtgnet.cli import main
from dtgnet.data.synth import PRESETS, SynthPreset, class_names
from dtgnet.data.video import PyAVReader
from tests.conftest import TINY


def test_scan_reports_every_bad_kind(video_dir, tmp_path, capsys):
    out = tmp_path / "manifest.json"
    rc = main(["data", "scan", str(tmp_path / "all.txt"), "--root", str(video_dir), "--out", str(out),
               "--classes", str(tmp_path / "classes.txt")])
    assert rc == 0
    m = json.loads(out.read_text())
    assert sorted(m["ok"]) == ["run/run0.mp4", "run/run1.mp4", "walk/walk0.mp4", "walk/walk1.mp4"]
    kinds = {b["path"]: b["kind"] for b in m["bad"]}
    assert kinds == {"bad/empty.mp4": "empty", "bad/truncated.mp4": "truncated",
                     "bad/garbage.mp4": "undecodable", "bad/missing.mp4": "missing",
                     "walk/walk0.mp4": "unknown label", "../outside.mp4": "outside root"}
    assert all(b["reason"] for b in m["bad"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("scanned 10: 4 ok, 6 bad") and "\n" not in line


def test_scan_missing_list_exit_2(tmp_path, capsys):
    rc = main(["data", "scan", str(tmp_path / "none.txt"), "--root", str(tmp_path), "--out", str(tmp_path / "m")])
    assert rc == 2 and "none.txt" in capsys.readouterr().err


def test_synth_layout(tiny_synth):
    names = class_names(TINY.pairs)
    assert (tiny_synth / "classes.txt").read_text().split() == names
    train = (tiny_synth / "train.txt").read_text().splitlines()
    assert len(train) == TINY.train_per_class * len(names)
    path, label = train[0].split()
    assert path.endswith(".mp4") and int(label) == 0
    info = PyAVReader().info(tiny_synth / path)
    assert (info.num_frames, info.width) == (TINY.frames, TINY.size)
    stills = list((tiny_synth / "stills" / names[1]).glob("*.png"))
    assert len(stills) == TINY.stills_per_class
    # train, val and test never share a file
    sets = [{ln.split()[0] for ln in (tiny_synth / f"{s}.txt").read_text().splitlines()} for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


@pytest.mark.parametrize("design", ["twins", "ucf_like"])
def test_synth_is_deterministic_across_processes(tmp_path, design):
    """Two processes with the same seed write the same bytes, hence the same decoded frames; a third seed
    differs. Each generation runs in its own interpreter, as a user regenerating the benchmark would."""
    small = {**TINY.__dict__, "train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "stills_per_class": 1,
             "design": design}
    code = ("import sys; from dtgnet.data.synth import SynthPreset, generate; "
            f"generate(sys.argv[1], SynthPreset(**{small!r}), seed=int(sys.argv[2]), progress=False)")
    dirs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        subprocess.run([sys.executable, "-c", code, str(dirs[name]), str(seed)], check=True)
    a, b, c = dirs.values()
    for name in ("classes.txt", "train.txt", "val.txt", "test.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    stills = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert stills and all((a / rel).read_bytes() == (b / rel).read_bytes() for rel in stills)
    videos = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert len(videos) == 4 * (2 + 1 + 1)
    r = PyAVReader()
    for rel in videos:
        fa, fb = (r.read(d / rel, list(range(TINY.frames))) for d in (a, b))
        np.testing.assert_array_equal(fa, fb, err_msg=str(rel))
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    fc = r.read(c / videos[0], list(range(TINY.frames)))
    assert np.abs(r.read(a / videos[0], list(range(TINY.frames))).astype(int) - fc.astype(int)).mean() > 5


def test_ucf_like_design():
    """A third of the classes are time-reversed twins that share actor and scene; every other class shares its
    motion with another class and differs from it in actor or scene, so neither motion nor one frame alone
    is the whole story."""
    from dtgnet.data.synth import PAIRS, SCENES, UCF_LIKE, design_preset

    p = PRESETS["ucf_like_study"]
    assert p.design == "ucf_like" and len(p.classes()) == 12 and p.classes() == UCF_LIKE
    reverse = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}
    twins = [(c, d) for c in UCF_LIKE for d in UCF_LIKE if reverse[c.motion] == d.motion
             and (c.actor, c.scene) == (d.actor, d.scene)]
    assert len(twins) == 4  # two pairs, each counted from both sides
    for c in UCF_LIKE:
        assert c.scene in SCENES
        if any(c is t for t, _ in twins):
            continue
        same_motion = [d for d in UCF_LIKE if d is not c and d.motion == c.motion]
        assert same_motion and all((d.actor, d.scene) != (c.actor, c.scene) for d in same_motion), c.name
    assert len({c.name for c in UCF_LIKE}) == 12
    assert [c.name for c in PRESETS["ucf_like_smoke"].classes()] == [c.name for c in UCF_LIKE[:4]]
    assert design_preset("study", "ucf_like") == "ucf_like_study" and design_preset("default", "ucf_like") == "ucf_like"
    assert design_preset("ucf_like_smoke", "twins") == "smoke" and design_preset("quick") == "quick"
    with pytest.raises(ValueError, match="'mnist'"):
        design_preset("study", "mnist")
    # the twins presets keep their classes (and so their bytes: the render's draws did not change)
    assert [c.name for c in PRESETS["study"].classes()] == class_names(5)


def test_splits_draw_on_disjoint_source_images():
    """Train, val and test cut actors and backgrounds from disjoint parts of the source images (as UCF101's
    groups keep one person's clips in one split): no source pixel block appears in two splits."""
    from dtgnet.data.synth import Sources

    src = Sources()
    for kind in ("face", "digit"):  # whole images: disjoint index ranges of the same collection
        seen = [{a.tobytes() for a in src.actors[s][kind]} for s in ("train", "val", "test")]
        assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), kind

    def rows(images):  # photo bands: a row of pixels from one split never appears in another
        return {img[y].tobytes() for img in images for y in range(img.shape[0])}

    for kind in ("animal", "person", "object"):
        bands = [rows(src.actors[s][kind]) for s in ("train", "val", "test")]
        assert not (bands[0] & bands[1] or bands[0] & bands[2] or bands[1] & bands[2]), kind
    scenes = [rows(src.backgrounds[s]) for s in ("train", "val", "test")]
    assert not (scenes[0] & scenes[1] or scenes[0] & scenes[2] or scenes[1] & scenes[2])


def test_synth_pairs_differ_only_in_time_direction():
    from dtgnet.data.synth import _trajectory

    t = np.linspace(0, 1, 9)
    fwd = _trajectory("approach", t, np.random.default_rng(0))
    back = _trajectory("recede", t, np.random.default_rng(0))
    np.testing.assert_allclose(fwd[2], back[2][::-1])  # scale path reversed in time
    assert PRESETS["quick"].pairs <= PRESETS["default"].pairs


def test_synth_cli(tmp_path, capsys, monkeypatch):
    import dtgnet.data.synth as synth

    monkeypatch.setitem(synth.PRESETS, "quick", SynthPreset(**{**TINY.__dict__, "train_per_class": 1,
                                                                "val_per_class": 1, "test_per_class": 1,
                                                                "stills_per_class": 1}))
    assert main(["data", "synth", str(tmp_path / "s"), "--preset", "quick", "--seed", "1"]) == 0
    assert "SynthActions quick" in capsys.readouterr().out
    assert (tmp_path / "s" / "train.txt").exists()
