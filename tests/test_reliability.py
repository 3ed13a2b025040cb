"""Exact resume after SIGKILL, atomic checkpoints, non-finite losses, input validation."""
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dtgnet.cli import main
from dtgnet.config import save_config
from dtgnet.errors import EXIT_PREEMPTED, CheckpointError, Preempted
from dtgnet.io import DiskFullError, atomic_save, load_checkpoint
from dtgnet.training import train
from dtgnet.training.checkpoint import state_tensors
from dtgnet.training.run_state import NonFiniteLoss
from dtgnet.training.runlog import RunDir, RunDirError, read_log
from tests.conftest import signal_in_step, wrap_dtg_loss
from tests.test_training import tiny_cfg, tiny_overrides

STEPS = 8
COMMON = {"optim.max_steps": STEPS, "optim.epochs": 2, "run.checkpoint_every": 1, "run.teacher_cache": True,
          "loss.weighting": "adaptive", "loss.queue_size": 8, "optim.batch_size": 4, "run.threads": 1,
          "data.num_workers": 2}


def dtgnet(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dtgnet", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def final_tensors(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ckpt["step"], state_tensors(ckpt)


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (here: a run's DataLoader workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_and_wait_for_step(root, out, step):
    """Start a pre-training run on ``root`` into ``out``; return it once its log shows ``step``, with the
    log's last step."""
    p = dtgnet(["pretrain", *tiny_overrides(root, out, **COMMON), "--no-progress"], out.parent)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        logged = [r["step"] for r in read_log(out / "log.jsonl") if "loss" in r]
        if logged and logged[-1] >= step:
            return p, logged[-1]
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step}: {p.stderr.read().decode()[-2000:]}")


@pytest.fixture(scope="module")
def reference(tiny_synth, tmp_path_factory):
    """An uninterrupted run with DataLoader workers: (work dir, final step, final tensors)."""
    work = tmp_path_factory.mktemp("reliability")
    p = dtgnet(["pretrain", *tiny_overrides(tiny_synth, work / "ref", **COMMON), "--no-progress"], work)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    yield (work, *final_tensors(work / "ref"))
    shutil.rmtree(work, ignore_errors=True)  # its checkpoints take gigabytes; the suite's disk stays bounded


def assert_same(run_dir, reference, what):
    _, ref_step, ref_tensors = reference
    step, tensors = final_tensors(run_dir)
    assert step == ref_step == STEPS and tensors.keys() == ref_tensors.keys()
    different = [k for k in tensors if not torch.equal(tensors[k], ref_tensors[k])]
    assert not different, f"{what}: {different[:5]}"


def test_sigkill_with_workers_resumes_at_once_bit_identical(tiny_synth, reference):
    """kill -9 of a run with DataLoader workers: --resume is accepted at once, and no worker is left over."""
    work = reference[0]
    rng = random.Random(1234)
    for trial in range(3):
        kill_at = rng.randint(2, STEPS - 2)
        out = work / f"killed{trial}"
        p, _ = start_and_wait_for_step(tiny_synth, out, kill_at)
        workers = children(p.pid)
        p.send_signal(signal.SIGKILL)
        p.wait()
        resumed = dtgnet(["pretrain", "-c", str(out / "config.yaml"), "--resume", "--no-progress"], work)
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
        assert workers and not any(alive(w) for w in workers), "DataLoader workers die with their parent"
        assert_same(out, reference, f"kill at step {kill_at}")


def test_sigterm_checkpoints_within_a_step_and_resumes_bit_identical(tiny_synth, reference):
    """As a scheduler does, the signal goes to every process of the job: the run and its DataLoader workers."""
    work = reference[0]
    out = work / "preempted"
    p, logged = start_and_wait_for_step(tiny_synth, out, 3)
    assert children(p.pid)
    os.killpg(p.pid, signal.SIGTERM)
    assert p.wait(timeout=120) == EXIT_PREEMPTED, p.stderr.read().decode()[-2000:]
    assert "preempted: SIGTERM at step" in p.stderr.read().decode()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    # the log may have moved on by one step between reading it and the signal landing
    assert logged <= saved <= logged + 2 < STEPS
    events = [r for r in read_log(out / "log.jsonl") if r.get("event") == "preempted"]
    assert events == [{**events[0], "signal": "SIGTERM", "step": saved}]
    resumed = dtgnet(["pretrain", "-c", str(out / "config.yaml"), "--resume", "auto", "--no-progress"], work)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    assert_same(out, reference, f"SIGTERM at step {saved}")


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


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_synth, tmp_path / "nan", **{"optim.max_steps": 6, "run.checkpoint_every": 1,
                                                    "run.log_every": 10})
    def poison(n, result):
        if n >= 3:
            result.total = result.total * float("nan")

    wrap_dtg_loss(monkeypatch, after=poison)
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

@pytest.fixture()
def small_disk(tmp_path):
    """A real file system of a given size (tmpfs), to fill up; skipped where mounting is not allowed."""
    mounts = []

    def make(size: str) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def one_line_error(capsys) -> str:
    """The command's error: one line, after any progress bars, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("dtgnet: error: "), err
    return last


def test_prepare_and_teacher_cache_on_a_full_disk_fail_cleanly(tiny_synth, small_disk, capsys):
    disk = small_disk("256k")
    args = tiny_overrides(tiny_synth, disk / "run")
    assert main(["data", "prepare", *args, "--out", str(disk / "prep"), "--size", "64"]) == 2
    err = one_line_error(capsys)
    assert f"{disk / 'prep' / 'frames.npy.tmp'}: No space left on device: writing it needs" in err and "bytes" in err
    assert sorted(p.name for p in (disk / "prep").iterdir()) == []  # nothing half-written to be taken later
    assert main(["teacher", "cache", *args, "--out", str(disk / "cache")]) == 2
    err = one_line_error(capsys)
    assert f"{disk / 'cache' / 'imagenet.npy.tmp'}: No space left on device: writing it needs" in err
    assert sorted(p.name for p in (disk / "cache").iterdir()) == []


def test_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_previous(tiny_synth, small_disk, capsys):
    disk = small_disk("200m")  # one checkpoint of the tiny student (~141 MB) fits, a second beside it does not
    args = tiny_overrides(tiny_synth, disk / "run", **{"optim.max_steps": 3, "run.checkpoint_every": 1})
    assert main(["pretrain", *args, "teachers=[]", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "could not write the step 2 checkpoint" in err and "No space left on device" in err
    assert "writing it needs" in err and "previous checkpoint is intact" in err
    assert load_checkpoint(disk / "run" / "checkpoints" / "last.pt")["step"] == 1
    assert not list((disk / "run" / "checkpoints").glob("*.tmp"))


def test_sigusr1_in_process_stops_after_the_step_with_a_checkpoint(tiny_synth, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_synth, tmp_path / "usr1", **{"optim.max_steps": 6, "run.checkpoint_every": 10})
    cfg.teachers = []
    calls = signal_in_step(monkeypatch, 2)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted, match="SIGUSR1 at step 2"):
        train(cfg, "pretrain", progress=False)
    assert calls["n"] == 2  # no step started after the signal
    assert load_checkpoint(tmp_path / "usr1" / "checkpoints" / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGUSR1) is before  # the run's handler is gone with the run
