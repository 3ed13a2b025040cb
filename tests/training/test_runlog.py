"""The run directory: its lock, --force, --resume and --resume auto, and the log."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from dtgnet.cli import main
from dtgnet.config import save_config
from dtgnet.training.runlog import RunDir, RunDirError, read_log
from tests.conftest import tiny_cfg, tiny_overrides
from tests.training.test_reliability import alive


def test_resume_cli_with_other_config_is_refused(tiny_synth, tmp_path, capsys):
    cfg_args = tiny_overrides(tiny_synth, tmp_path / "r", **{"optim.max_steps": 1})
    assert main(["pretrain", *cfg_args, "--no-progress"]) == 0
    assert main(["pretrain", "-c", str(tmp_path / "r" / "config.yaml"), "optim.lr=0.5", "--resume"]) == 2
    assert "config differs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the run lock

HOLD_LOCK = """
import os, sys, time
from dtgnet.training.runlog import RunDir
run = RunDir(sys.argv[1], resume="auto")
child = os.fork()  # a child that outlives its parent, holding every inherited descriptor
if child == 0:
    time.sleep(30)
    os._exit(0)
print("locked", child, flush=True)
time.sleep(600)
"""


def test_force_refuses_a_live_run_and_names_it_then_clears_a_dead_ones(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"precious")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        said, child = holder.stdout.readline().split()
        assert said == "locked"
        with pytest.raises(RunDirError, match=f"live run holds this directory \\(pid {holder.pid} on "):
            RunDir(out, force=True)
        assert (out / "checkpoints" / "last.pt").read_bytes() == b"precious"  # nothing deleted under it
    finally:
        holder.kill()
        holder.wait()
    assert alive(int(child))  # still holding the lock file open
    run = RunDir(out, force=True)  # the owner is dead: the lock is free at once, --force clears the rest
    os.kill(int(child), signal.SIGKILL)
    try:
        assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoints"]
        assert not any((out / "checkpoints").iterdir())
    finally:
        run.close()


def test_resume_auto_starts_fresh_resumes_or_refuses(tiny_synth, tmp_path, capsys):
    out = tmp_path / "auto"
    args = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 2})
    assert main(["pretrain", *args, "--resume", "auto", "--no-progress"]) == 0  # new directory: fresh
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    more = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 3})
    assert main(["pretrain", *more, "--resume", "auto", "--no-progress"]) == 2  # a different config
    assert "config differs" in capsys.readouterr().err
    assert main(["pretrain", *args, "--resume", "auto", "--no-progress"]) == 0  # same config: resumes
    resumes = [r for r in read_log(out / "log.jsonl") if r.get("event") == "resume"]
    assert resumes and resumes[-1]["step"] == 2 and resumes[-1]["skipped"] == []
    # a run that died before its first checkpoint: the same command starts it again
    died = tmp_path / "died"
    died.mkdir()
    (died / "log.jsonl").write_text("")
    save_config(tiny_cfg(tiny_synth, died, **{"optim.max_steps": 2}), died / "config.yaml")
    assert main(["pretrain", *tiny_overrides(tiny_synth, died, **{"optim.max_steps": 2}), "--resume", "auto",
                 "--no-progress"]) == 0
    # a directory that is not a run is never cleared
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["pretrain", *tiny_overrides(tiny_synth, other), "--resume", "auto"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------ checkpoints


def test_a_run_saved_before_an_option_existed_resumes_after_the_upgrade(tiny_synth, tmp_path, capsys):
    """A run's config.yaml and checkpoint written by a version without some options (here: token distillation's)
    resume under this version, whose defaults for them are the old behaviour; a changed value is still refused."""
    import yaml

    from dtgnet.training.checkpoint import config_hash

    out = tmp_path / "old"
    args = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 1, "optim.epochs": 2})
    assert main(["pretrain", *args, "--no-progress"]) == 0

    def older(config: dict) -> dict:
        for key in ("token_weight", "token_form", "clip_weight"):
            del config["loss"][key]
        del config["student"]["mask_ratio"]
        return config

    saved = out / "config.yaml"
    saved.write_text(yaml.safe_dump(older(yaml.safe_load(saved.read_text())), sort_keys=False))
    last = out / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    ckpt["meta"]["config"] = older(ckpt["meta"]["config"])
    ckpt["config_hash"] = config_hash(ckpt["meta"]["config"])
    torch.save(ckpt, last)
    for sidecar in last.parent.glob("last.pt.*"):  # its checksum no longer matches the rewritten file
        sidecar.unlink()
    longer = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 2, "optim.epochs": 2})
    assert main(["pretrain", *longer, "--resume", "auto", "--no-progress"]) == 2  # max_steps differs: another run
    assert "config differs" in capsys.readouterr().err
    assert main(["pretrain", *args, "--resume", "auto", "--no-progress"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl") if r.get("event") == "resume"] == [1]
