"""Exact resume after SIGKILL, atomic checkpoints, non-finite losses, input validation."""
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
from dtgnet.errors import EXIT_PREEMPTED, Preempted
from dtgnet.io import load_checkpoint
from dtgnet.training import train
from dtgnet.training.checkpoint import state_tensors
from dtgnet.training.run_state import NonFiniteLoss
from dtgnet.training.runlog import read_log
from tests.conftest import signal_in_step, tiny_cfg, tiny_overrides, wrap_dtg_loss

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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_from_outside_checkpoints_within_a_step_and_resumes_bit_identical(tiny_synth, reference, sig):
    """As a scheduler does, the signal goes to every process of the job, from outside: the run and its
    DataLoader workers (SIGTERM, or SIGUSR1 as SLURM's --signal sends it)."""
    work = reference[0]
    out = work / f"preempted_{sig.name}"
    p, logged = start_and_wait_for_step(tiny_synth, out, 3)
    assert children(p.pid)
    os.killpg(p.pid, sig)
    assert p.wait(timeout=120) == EXIT_PREEMPTED, p.stderr.read().decode()[-2000:]
    assert f"preempted: {sig.name} at step" in p.stderr.read().decode()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    # the log may have moved on by one step between reading it and the signal landing
    assert logged <= saved <= logged + 2 < STEPS
    events = [r for r in read_log(out / "log.jsonl") if r.get("event") == "preempted"]
    assert events == [{**events[0], "signal": sig.name, "step": saved}]
    resumed = dtgnet(["pretrain", "-c", str(out / "config.yaml"), "--resume", "auto", "--no-progress"], work)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    assert_same(out, reference, f"{sig.name} at step {saved}")


def test_a_loader_killed_by_the_signal_a_moment_before_it_arrives_is_a_preemption(tiny_synth, tmp_path, monkeypatch):
    """A scheduler signals the process group: a DataLoader worker can die of it, and the loader fail, just before
    the main process runs its own handler. That is a preemption (checkpoint, exit 75), not a crash."""
    import threading

    from dtgnet.training import Trainer

    real = Trainer.loader

    def failing(self, start):
        for n, batch in enumerate(real(self, start)):
            if n == 2:
                threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the signal, a moment late
                raise RuntimeError("DataLoader worker (pid 1234) exited unexpectedly")
            yield batch

    monkeypatch.setattr(Trainer, "loader", failing)
    cfg = tiny_cfg(tiny_synth, tmp_path / "late", **{"optim.max_steps": 6, "run.checkpoint_every": 100})
    with pytest.raises(Preempted, match="SIGTERM at step 2"):
        train(cfg, "pretrain", progress=False)
    assert load_checkpoint(tmp_path / "late" / "checkpoints" / "last.pt")["step"] == 2
    monkeypatch.setattr(Trainer, "loader", lambda self, start: (_ for _ in ()).throw(RuntimeError("broken loader")))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="broken loader"):  # no signal on its way: the failure stands
        train(tiny_cfg(tiny_synth, tmp_path / "broken"), "pretrain", progress=False)
    assert time.monotonic() - started < 60


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


def test_a_wrong_data_root_is_one_line_before_any_directory(tiny_synth, tmp_path, capsys):
    """Every listed file missing (data.root names another folder): one line naming data.root and a missing
    path, and no run directory left behind."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    args = tiny_overrides(tiny_synth, out) + [f"data.root={elsewhere}", "data.num_workers=1"]
    assert main(["pretrain", *args, "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert f"data.root={elsewhere}" in line and str(elsewhere / "videos" / "train") in line
    assert "24 of 24 listed videos are missing" in line
    assert not out.exists()


def test_missing_files_are_counted_when_the_list_is_loaded(tiny_synth, tmp_path):
    """A few missing files: bad items from the start, named in the log and the metrics; the usable count is
    the files', not the entries'."""
    lines = (tiny_synth / "train.txt").read_text().splitlines()
    listed = tmp_path / "train.txt"
    listed.write_text("\n".join(lines[:16] + [f"videos/train/gone_{i}.mp4 0" for i in range(3)]) + "\n")
    cfg = tiny_cfg(tiny_synth, tmp_path / "run", **{"data.train_list": listed, "optim.batch_size": 4})
    cfg.teachers = []
    metrics = train(cfg, "pretrain", progress=False)
    assert metrics["videos"] == 16
    gone = [b for b in metrics["bad_items"] if "gone_" in b["path"]]
    assert len(gone) == 3 and all(b["reason"] == "file not found" for b in gone)
    logged = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("event") == "bad_item"]
    assert {r["path"] for r in logged} == {b["path"] for b in gone}


def test_an_error_in_a_dataloader_worker_is_the_same_one_line(tiny_synth, tmp_path, capsys):
    """Undecodable files everywhere: the worker's TooManyBadItems reaches the user as its own message, not
    as "Caught ... in DataLoader worker process 0" and the worker's traceback."""
    root = tmp_path / "garbage"
    (root / "v").mkdir(parents=True)
    rng = random.Random(0)
    for i in range(40):
        (root / "v" / f"g{i}.mp4").write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
    (root / "train.txt").write_text("".join(f"v/g{i}.mp4 {i % 4}\n" for i in range(40)))
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    args = tiny_overrides(root, tmp_path / "run", **{"data.val_list": "", "data.test_list": "", "data.num_workers": 1,
                                                     "data.max_bad_fraction": 1.0})
    assert main(["pretrain", *args, "teachers=[]", "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert "videos in a row failed to load" in line and "Caught" not in line
