"""DDP through torchrun on the CPU (gloo): 2 processes must train exactly like 1 with the same global batch,
stop together on a preemption signal, and survive the loss of a worker through an elastic restart."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dtgnet.training.runlog import read_log
from tests.conftest import tiny_overrides

STEPS = 6
COMMON = {"student.freeze_bn": True, "optim.batch_size": 4, "optim.max_steps": STEPS, "run.teacher_cache": True,
          "loss.weighting": "learned", "loss.queue_size": 8, "data.strong_aug": False, "run.checkpoint_every": 1,
          "run.keep_checkpoints": STEPS}


def command(args, nproc, *torchrun_args):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *torchrun_args] if nproc > 1 else [sys.executable]
    return launcher + ["-m", "dtgnet", *args]


def environment():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run(args, tmp_path, nproc):
    out = subprocess.run(command(args, nproc), capture_output=True, text=True, env=environment(), cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def start(args, tmp_path, nproc, *torchrun_args):
    return subprocess.Popen(command(args, nproc, *torchrun_args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment(), cwd=tmp_path)


def what_happened(printed: str) -> str:
    """A failed job's story in a few lines: each rank's last words (a rank that dies first is otherwise
    buried under its peer's traceback) and every error line."""
    lines = printed.splitlines()
    story = [f"--- rank {r}:\n" + "\n".join([x for x in lines if x.startswith(f"[rank{r}]:")][-8:]) for r in (0, 1)]
    errors = [x for x in lines if re.search(r"Error|Exception|signal|preempted|timed? ?out", x, re.I)]
    return "\n".join([*story, "--- errors and signals:", *errors[-30:]])


def output_of(job, timeout: float) -> str:
    """What the job printed once it ended; a job still running after ``timeout`` seconds is stopped (SIGTERM,
    which torchrun passes to its workers, then SIGKILL) and the test fails with its story."""
    try:
        return job.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        job.terminate()
        try:
            printed = job.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            job.kill()
            printed = job.communicate()[0]
        raise AssertionError(f"still running after {timeout} s:\n{what_happened(printed)}") from None


def logged_step(run_dir) -> int:
    return max([r["step"] for r in read_log(run_dir / "log.jsonl") if "loss" in r], default=0)


def wait_for(predicate, proc, what):
    deadline = time.time() + 300
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{what} never happened: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
        time.sleep(0.05)


def worker_pid(launcher_pid: int, rank: int) -> int:
    """The pid of a torchrun worker by its RANK (the workers are the launcher's children)."""
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            stat = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == launcher_pid and f"RANK={rank}".encode() in env.read_bytes().split(b"\0"):
                return int(env.parent.name)
        except OSError:
            continue
    raise AssertionError(f"no rank {rank} worker under pid {launcher_pid}")


def last_tensors(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return ckpt["step"], ckpt["model"]


@pytest.fixture(scope="module")
def runs(tiny_synth, tmp_path_factory):
    """The same job, uninterrupted, in 1 process and in 2."""
    work = tmp_path_factory.mktemp("ddp")
    for name, nproc in (("one", 1), ("two", 2)):
        run(["pretrain", *tiny_overrides(tiny_synth, work / name, **COMMON), "--no-progress"], work, nproc)
    yield work
    shutil.rmtree(work, ignore_errors=True)  # its checkpoints take gigabytes; the suite's disk stays bounded


def test_two_process_ddp_matches_one_process(runs):
    """The whole run, step by step. Two processes are not bit-identical to one: each rank's forward runs on half
    the batch and gloo sums the gradients in another order. Measured on this suite's run: losses within 2e-6
    (relative), the learned teacher weights equal, all weights within 6e-6 (relative norm) and every tensor
    within 3.4e-4 after 6 Adam steps; the bounds below leave a factor of 5."""
    logs = {n: [r for r in read_log(runs / n / "log.jsonl") if "loss" in r] for n in ("one", "two")}
    assert [r["step"] for r in logs["one"]] == [r["step"] for r in logs["two"]] == list(range(1, STEPS + 1))
    for a, b in zip(logs["one"], logs["two"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["weights"]["imagenet"] - b["weights"]["imagenet"]) <= 1e-6, a["step"]
    for step in range(1, STEPS + 1):
        one, two = (torch.load(runs / n / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)["model"]
                    for n in ("one", "two"))
        assert one.keys() == two.keys()
        floats = sorted(k for k in one if one[k].is_floating_point())
        a, b = (torch.cat([t[k].double().flatten() for k in floats]) for t in (one, two))
        assert (a - b).norm() <= 3e-5 * a.norm(), step
        for k in floats:
            x, y = one[k].double(), two[k].double()
            assert (x - y).norm() <= 2e-3 * x.norm() + 1e-7, (step, k)
    # only rank 0 wrote: one log, one events file
    assert len(list((runs / "two" / "tb").glob("events.*"))) == 1


def test_sigterm_stops_every_rank_then_an_elastic_restart_finishes_identically(tiny_synth, runs):
    out = runs / "elastic"
    # a peer that never answers fails the job within 45 s, for torchrun to restart it: a restarted round whose
    # rendezvous fails retries until then (3 rounds must fit the 400 s below); meanwhile the others wait in
    # their next collective while rank 0 writes each step's checkpoint, with room for a slow disk
    args = ["pretrain", *tiny_overrides(tiny_synth, out, **COMMON), "run.dist_timeout_s=45", "--resume", "auto",
            "--no-progress"]
    # 1. SIGTERM to torchrun, which passes it to each rank: they agree on a step, rank 0 checkpoints, all stop
    job = start(args, runs, 2)
    wait_for(lambda: logged_step(out) >= 2, job, "step 2")
    job.send_signal(signal.SIGTERM)
    printed = output_of(job, 120)
    said = re.findall(r"dtgnet: preempted: SIGTERM at step (\d+)", printed)
    # both ranks, one step
    assert job.returncode != 0 and len(said) == 2 and said[0] == said[1], what_happened(printed)
    stopped = last_tensors(out)[0]
    assert 2 <= stopped < STEPS and int(said[0]) == stopped
    assert [r["step"] for r in read_log(out / "log.jsonl") if r.get("event") == "preempted"] == [stopped]
    # 2. the same command resumes; rank 1 is killed mid-run and torchrun restarts the job, which resumes again.
    # torch's gloo rendezvous in a restarted round sometimes fails ("connection refused") however often it
    # is retried; a scheduler then requeues the same command, as done here, and the test is reported as an
    # expected failure (x), not a pass: the elastic restart itself was not shown
    job = start(args, runs, 2, "--max-restarts=2", "--monitor-interval=0.1")
    wait_for(lambda: logged_step(out) > stopped, job, f"step {stopped + 1}")
    os.kill(worker_pid(job.pid, 1), signal.SIGKILL)
    printed = output_of(job, 400)
    restarted_by_torchrun = job.returncode == 0
    resumes_by_torchrun = [r["step"] for r in read_log(out / "log.jsonl") if r.get("event") == "resume"]
    if not restarted_by_torchrun:
        assert "connectFullMesh" in printed, what_happened(printed)
        job = start(args, runs, 2)
        printed = output_of(job, 400)
    assert job.returncode == 0, what_happened(printed)
    resumes = [r["step"] for r in read_log(out / "log.jsonl") if r.get("event") == "resume"]
    assert len(resumes) == 2 and resumes[0] == stopped and resumes[1] > stopped, resumes
    step, final = last_tensors(out)
    ref_step, ref = last_tensors(runs / "two")
    assert step == ref_step == STEPS and final.keys() == ref.keys()
    different = [k for k in final if not torch.equal(final[k], ref[k])]
    assert not different, different[:5]
    if not restarted_by_torchrun:
        pytest.xfail("torchrun's restarted round failed in gloo's rendezvous (connectFullMesh); the requeued job "
                     "finished identically, but no resume came from torchrun's own restart")
    assert resumes_by_torchrun == resumes  # both resumes happened inside the torchrun job that was killed


@pytest.mark.parametrize("arch, two_only", [("vit_t", {}), ("r3d_18", {}), ("vit_t", {"optim.micro_batch": 1})])
def test_a_vit_and_a_3d_student_train_alike_in_one_and_two_processes(tiny_synth, tmp_path, arch, two_only):
    """Also: two processes in micro-batches of one video (GradCache outside DDP's hooks, one all-reduce)
    train as one process on the whole batch."""
    opts = {**COMMON, "student.arch": arch, "student.patch_size": 8, "optim.max_steps": 3,
            "run.keep_checkpoints": 3}
    for name, nproc, extra in (("one", 1, {}), ("two", 2, two_only)):
        run(["pretrain", *tiny_overrides(tiny_synth, tmp_path / name, **opts, **extra), "--no-progress"], tmp_path,
            nproc)
    logs = {n: [r["loss"] for r in read_log(tmp_path / n / "log.jsonl") if "loss" in r] for n in ("one", "two")}
    assert len(logs["one"]) == len(logs["two"]) == 3
    assert all(abs(a - b) < 1e-4 * max(1.0, abs(a)) for a, b in zip(logs["one"], logs["two"]))
    one, two = (last_tensors(tmp_path / n)[1] for n in ("one", "two"))
    # all weights together: the key half of a qkv bias gets no gradient (softmax ignores it), and Adam turns
    # the float noise there into lr-sized steps that differ between 1 and 2 processes
    a, b = (torch.cat([t[k].double().flatten() for k in sorted(t)]) for t in (one, two))
    assert (a - b).norm() <= 1e-3 * a.norm()
