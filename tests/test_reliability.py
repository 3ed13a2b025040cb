"""Exact resume after SIGKILL, atomic checkpoints, non-finite losses, input validation."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import dtgnet.training as training
from dtgnet.checkpoint import atomic_save
from dtgnet.cli import main
from dtgnet.errors import CheckpointError
from dtgnet.runlog import read_log
from dtgnet.training import NonFiniteLoss, train
from tests.test_training import tiny_cfg, tiny_overrides

STEPS = 8
COMMON = {"optim.max_steps": STEPS, "optim.epochs": 2, "run.checkpoint_every": 1, "run.teacher_cache": True,
          "loss.weighting": "adaptive", "loss.queue_size": 8, "optim.batch_size": 4, "run.threads": 1}


def dtgnet(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dtgnet", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def final_tensors(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        out.update({f"optim.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    out.update({f"weighting.{k}": v for k, v in ckpt["weighting"].items()})
    out.update({f"queue.{i}": q for i, q in enumerate(ckpt["queues"])})
    return ckpt["step"], out


def test_sigkill_and_resume_is_bit_identical(tiny_synth, tmp_path):
    ref = tmp_path / "ref"
    p = dtgnet(["pretrain", *tiny_overrides(tiny_synth, ref, **COMMON), "--no-progress"], tmp_path)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    ref_step, ref_tensors = final_tensors(ref)
    assert ref_step == STEPS
    rng = random.Random(1234)
    for trial in range(3):
        kill_at = rng.randint(2, STEPS - 2)
        out = tmp_path / f"killed{trial}"
        p = dtgnet(["pretrain", *tiny_overrides(tiny_synth, out, **COMMON), "--no-progress"], tmp_path)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if any(r.get("step", 0) >= kill_at for r in read_log(out / "log.jsonl")):
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        resumed = dtgnet(["pretrain", "-c", str(out / "config.yaml"), "--resume", "--no-progress"], tmp_path)
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
        step, tensors = final_tensors(out)
        assert step == STEPS and tensors.keys() == ref_tensors.keys()
        different = [k for k in tensors if not torch.equal(tensors[k], ref_tensors[k])]
        assert not different, f"kill at step {kill_at}: {different[:5]}"


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(3)}, path)

    def disk_full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dtgnet.checkpoint.torch.save", disk_full)
    with pytest.raises(OSError):
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

    monkeypatch.setattr("dtgnet.checkpoint.torch.save", fail_second)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        train(cfg, "pretrain", progress=False)
    assert torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_synth, tmp_path / "nan", **{"optim.max_steps": 6, "run.checkpoint_every": 1,
                                                    "run.log_every": 10})
    real = training.dtg_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        res = real(*a, **kw)
        if calls["n"] >= 3:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(training, "dtg_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="step 3"):
        train(cfg, "pretrain", progress=False)
    assert torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("args, needle", [
    (["pretrain", "data.root=/nonexistent"], "data.root"),
    (["pretrain", "-c", "/nonexistent.yaml"], "nonexistent.yaml"),
    (["pretrain", "run.device=tpu"], "run.device"),
    (["finetune", "--init", "/nonexistent.pt"], "nonexistent.pt"),
    (["eval", "--checkpoint", "/nonexistent.pt", "--protocol", "knn"], "nonexistent.pt"),
    (["teacher", "train", "/nonexistent", "--out", "/tmp/x.safetensors"], "nonexistent"),
    (["data", "scan", "/nonexistent.txt", "--root", "/", "--out", "/tmp/m.json"], "nonexistent.txt"),
    (["data", "scan", "/nonexistent.txt", "--root", "/", "--out", "/tmp/m.json", "--format", "avi"], "data.format"),
    (["data", "synth", "/proc/dtgnet-unwritable"], "/proc/dtgnet-unwritable"),
])
def test_cli_rejects_bad_input_with_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_resume_cli_with_other_config_is_refused(tiny_synth, tmp_path, capsys):
    cfg_args = tiny_overrides(tiny_synth, tmp_path / "r", **{"optim.max_steps": 1})
    assert main(["pretrain", *cfg_args, "--no-progress"]) == 0
    assert main(["pretrain", "-c", str(tmp_path / "r" / "config.yaml"), "optim.lr=0.5", "--resume"]) == 2
    assert "config differs" in capsys.readouterr().err
