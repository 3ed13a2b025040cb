import subprocess
import sys

import pytest

from dtgnet.cli import build_parser, main

COMMANDS = [[], ["data"], ["data", "synth"], ["data", "scan"], ["teacher"], ["teacher", "train"], ["teacher", "cache"], ["pretrain"],
            ["finetune"], ["joint"], ["eval"], ["demo"], ["study"], ["config"], ["bench"], ["data", "prepare"]]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: dtgnet" in text and len(text) > 150


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "dtgnet", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout


def test_config_listing(capsys):
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "loss.weighting = 'fixed'" in text and "teachers.N.source" in text


def test_teacher_train_bad_input(tmp_path, capsys):
    assert main(["teacher", "train", str(tmp_path / "none"), "--out", str(tmp_path / "t.safetensors")]) == 2
    assert "none" in capsys.readouterr().err


def test_bench_quick_writes_every_key(tmp_path, capsys):
    import json

    assert main(["bench", "--quick", "--json", str(tmp_path / "b.json")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())
    for key in ("student_step_s", "dtg_online_step_s", "dtg_cached_step_s", "loader_naive_clips_per_s",
                "loader_fast_clips_per_s", "colour_ms_per_batch", "loader_hd_clips_per_s", "loader_hd_full_size_decode_clips_per_s",
                "device", "config"):
        assert key in r
    assert r["dtg_online_step_s"] > 0 and r["loader_fast_clips_per_s"] > 0 and r["loader_hd_clips_per_s"] > 0
    assert "cached / online" in capsys.readouterr().out


def test_bench_models_quick_times_every_student_and_teacher_source(tmp_path, capsys):
    import json

    assert main(["bench", "--models", "--quick", "--json", str(tmp_path / "m.json")]) == 0
    r = json.loads((tmp_path / "m.json").read_text())
    assert set(r["student_step_s"]) == {"tsn_r18", "vit_t", "swin3d_t"} and min(r["student_step_s"].values()) > 0
    assert {k.split(":")[0] for k in r["teacher_images_per_s"]} == {"efficientnet_lite0", "timm", "open_clip", "hf"}
    assert r["hub_dtg_online_step_s"] > 0 and r["hub_dtg_cached_step_s"] > 0
    assert "cached" in capsys.readouterr().out
