"""Checkpoints: atomic and checksummed files, rotation, resume from the newest readable one."""
import errno
import subprocess

import pytest
import torch

from dtgnet.cli import main
from dtgnet.errors import CheckpointError
from dtgnet.io import DiskFullError, atomic_save, load_checkpoint
from dtgnet.training import train
from dtgnet.training.runlog import read_log
from tests.conftest import tiny_cfg, tiny_overrides


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(3)}, path)

    def disk_full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(DiskFullError, match="last.pt: No space left on device: writing it needs"):
        atomic_save({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_failure_in_a_run_is_a_clear_error(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_synth, tmp_path / "full", **{"optim.max_steps": 3, "run.checkpoint_every": 1})
    cfg.teachers = []
    calls = {"n": 0}
    real_save = torch.save

    def fail_second(obj, fh):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, fh)

    monkeypatch.setattr(torch, "save", fail_second)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        train(cfg, "pretrain", progress=False)
    assert torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


def test_resume_falls_back_from_a_damaged_last_checkpoint(tiny_synth, tmp_path, capsys):
    out = tmp_path / "fb"
    args = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 3, "run.checkpoint_every": 1,
                                              "run.keep_checkpoints": 3})
    assert main(["pretrain", *args, "--no-progress"]) == 0
    ckpts = out / "checkpoints"
    check = subprocess.run(["sha256sum", "-c", "last.pt.sha256", "step_00000002.pt.sha256"], cwd=ckpts,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # the sidecars are standard sha256sum lines
    last = ckpts / "last.pt"  # a hard link to step 3: damaging one damages both
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(last)
    (ckpts / "step_00000002.pt").write_bytes((ckpts / "step_00000002.pt").read_bytes()[:1000])  # cut short
    more = tiny_overrides(tiny_synth, out, **{"optim.max_steps": 3, "run.checkpoint_every": 1,
                                              "run.keep_checkpoints": 3})
    assert main(["pretrain", *more, "--resume", "auto", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "step_00000001.pt" in err and "checksum mismatch" in err
    resume = [r for r in read_log(out / "log.jsonl") if r.get("event") == "resume"][-1]
    assert resume["step"] == 1 and len(resume["skipped"]) == 3  # last.pt, step 3, step 2
    assert load_checkpoint(ckpts / "last.pt")["step"] == 3  # trained on from step 1


# ------------------------------------------------------------------------------------------ full disks


def test_rotation_keeps_the_newest_step_files_with_last_and_best_aliases(tmp_path):
    from dtgnet.io import checksum_path
    from dtgnet.training.checkpoint import save_rotating

    for step in range(1, 5):
        save_rotating({"step": step, "w": torch.full((2,), float(step))}, tmp_path, step, keep=2, best=step == 2)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000003.pt", "step_00000004.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2  # outlives the step file it came from
    assert all(checksum_path(p).is_file() for p in tmp_path.glob("*.pt"))
    assert not list(tmp_path.glob("*.tmp")) and not checksum_path(tmp_path / "step_00000001.pt").exists()


def test_a_damaged_file_fails_its_checksum_and_the_newest_readable_one_is_used(tmp_path):
    from dtgnet.training.checkpoint import load_newest_readable, save_rotating

    for step in (1, 2):
        save_rotating({"step": step}, tmp_path, step, keep=3)
    (tmp_path / "last.pt").unlink()
    damaged = tmp_path / "step_00000002.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(damaged)
    ckpt, path, skipped = load_newest_readable(tmp_path)
    assert (ckpt["step"], path.name) == (1, "step_00000001.pt") and "step_00000002.pt" in skipped[0]


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from dtgnet.training.checkpoint import rng_state, set_rng_state

    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_config_hash_ignores_key_order_and_sees_every_value():
    from dtgnet.training.checkpoint import config_hash

    a = config_hash({"optim": {"lr": 0.1, "batch_size": 4}, "seed": 0})
    assert a == config_hash({"seed": 0, "optim": {"batch_size": 4, "lr": 0.1}})  # order of keys is not a change
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != config_hash({"optim": {"lr": 0.2, "batch_size": 4}, "seed": 0})


def test_state_tensors_names_every_tensor_a_run_must_agree_on():
    from dtgnet.training.checkpoint import state_tensors

    w, m, q = torch.ones(2), torch.zeros(2), torch.full((3, 4), 2.0)
    ckpt = {"model": {"fc.weight": w}, "optimizer": {"state": {0: {"exp_avg": m, "step": 3}}},
            "weighting": {"log_vars": torch.zeros(2)}, "queues": [q]}
    flat = state_tensors(ckpt)
    assert list(flat) == ["model.fc.weight", "optim.0.exp_avg", "weighting.log_vars", "queue.0"]  # no int "step"
    assert flat["model.fc.weight"] is w and flat["optim.0.exp_avg"] is m and flat["queue.0"] is q


def test_no_readable_checkpoint_says_why_for_each_file(tmp_path):
    from dtgnet.training.checkpoint import load_newest_readable, save_rotating

    with pytest.raises(CheckpointError) as e:
        load_newest_readable(tmp_path)
    assert str(e.value) == f"{tmp_path}: no readable checkpoint to resume from"
    for step in (1, 2):
        save_rotating({"step": step}, tmp_path, step, keep=3)
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"damaged")
    with pytest.raises(CheckpointError) as e:
        load_newest_readable(tmp_path)
    text = str(e.value)
    assert text.startswith(f"{tmp_path}: no readable checkpoint to resume from (") and text.endswith(")")
    assert text.count("checksum mismatch") == 3 and text.count("; ") == 2  # last.pt and both step files


def test_where_hard_links_fail_the_aliases_are_copies(tmp_path, monkeypatch):
    import os

    from dtgnet.io import checksum_path
    from dtgnet.training.checkpoint import save_rotating

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    nested = tmp_path / "run" / "checkpoints"  # parents are made
    save_rotating({"step": 7, "w": torch.arange(3)}, nested, 7, keep=2, best=True)
    for alias in ("last.pt", "best.pt"):
        assert load_checkpoint(nested / alias)["step"] == 7 and checksum_path(nested / alias).is_file()
        assert (nested / alias).stat().st_ino != (nested / "step_00000007.pt").stat().st_ino
    save_rotating({"step": 8}, nested, 8, keep=2)  # best only when asked
    assert load_checkpoint(nested / "best.pt")["step"] == 7 and load_checkpoint(nested / "last.pt")["step"] == 8


def test_rotation_survives_a_step_file_whose_checksum_is_already_gone(tmp_path):
    from dtgnet.io import checksum_path
    from dtgnet.training.checkpoint import save_rotating

    save_rotating({"step": 1}, tmp_path, 1, keep=1)
    checksum_path(tmp_path / "step_00000001.pt").unlink()  # removed by hand, or by a run killed mid-rotation
    save_rotating({"step": 2}, tmp_path, 2, keep=1)
    assert [p.name for p in tmp_path.glob("step_*.pt")] == ["step_00000002.pt"]


def test_the_cuda_generators_are_saved_and_restored_when_there_is_a_gpu(monkeypatch):
    from dtgnet.training import checkpoint

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0 state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", calls.append)
    state = checkpoint.rng_state()
    assert state["cuda"] == ["gpu0 state"]
    checkpoint.set_rng_state(state)
    assert calls == [["gpu0 state"]]
    checkpoint.set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # a checkpoint from a CPU run
    assert calls == [["gpu0 state"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint.set_rng_state(state)  # a GPU checkpoint resumed on a CPU
    assert calls == [["gpu0 state"]] and "cuda" not in checkpoint.rng_state()
