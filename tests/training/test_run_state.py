"""What a run tracks besides its weights, unit by unit: the preemption flag and its handlers, the bad-item
accounting and its stopping rule, the log window (kept across a resume) and the non-finite-loss check."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from dtgnet.dist import Dist
from dtgnet.errors import TooManyBadItems
from dtgnet.training.run_state import BadItems, NonFiniteLoss, Preemption, StepWindow, worker_exits_quietly


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preemption_signal_only_sets_the_flag_and_the_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    p = Preemption()
    assert not p.requested and p.signal is None and p.describe() == "a preemption signal to another rank"
    with p.handlers():
        os.kill(os.getpid(), sig)
        assert p.requested and p.signal == sig and p.describe() == sig.name
    assert signal.getsignal(sig) is before


def test_handlers_outside_the_main_thread_change_nothing():
    seen = {}

    def body():
        with Preemption().handlers():
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["handler"] is before


def batch(indices, bad=()):
    """A loader batch: ``indices`` loaded fine, ``bad`` as the dataset reports failures (path TAB reason lines)."""
    return {"index": list(indices), "bad": ["\n".join(f"{p}\t{r}" for p, r in bad)] + [""] * (len(indices) - 1)}


def test_bad_items_count_the_list_and_the_loader():
    items = BadItems([("listed.mp4", "file not found")])
    stop, new = items.count(batch([0, 1, 2], [("a.mp4", "truncated: x"), ("b.mp4", "cannot open")]), Dist(), "cpu",
                            preempt=False)
    assert not stop and new == [("a.mp4", "truncated: x"), ("b.mp4", "cannot open")]
    assert items.seen == 3 and items.items == [("listed.mp4", "file not found"), *new]
    stop, new = items.count(batch([3, 4]), Dist(), "cpu", preempt=False)
    assert not stop and new == [] and items.seen == 5 and len(items.items) == 3


def test_a_preempted_batch_is_dropped_uncounted():
    items = BadItems([])
    assert items.count(batch([0, 1], [("a.mp4", "r")]), Dist(), "cpu", preempt=True) == (True, [])
    assert items.seen == 0 and items.items == []
    assert items.count(None, Dist(), "cpu", preempt=True) == (True, [])  # no batch: the loader went down
    assert items.count(None, Dist(), "cpu", preempt=False) == (False, [])


def test_too_many_needs_twenty_attempts_and_more_than_the_fraction():
    items = BadItems([(f"{i}.mp4", "r") for i in range(2)])
    items.seen = 17  # 19 attempted: too early to judge
    assert not items.too_many(0.05)
    items.seen = 18  # 20 attempted, 10 % bad
    assert items.too_many(0.05) and not items.too_many(0.1) and items.too_many(0.099)
    assert not BadItems([]).too_many(0.0)  # nothing bad is never too many
    err = items.error(0.05, Path("run/checkpoints/last.pt"))
    assert isinstance(err, TooManyBadItems)
    assert str(err) == ("2 of 20 items were unreadable (10.0% > data.max_bad_fraction=0.05); first: 0.mp4: r. "
                        "Progress saved in run/checkpoints/last.pt")


def test_the_window_survives_a_checkpoint_and_clears():
    w = StepWindow()
    w.loss, w.weights = [torch.tensor(1.0), torch.tensor(2.0)], [torch.tensor([0.5, 0.5])]
    w.wait, w.clips = 0.3, 8
    saved = w.pending()
    assert [t.item() for t in saved["loss"]] == [1.0, 2.0] and saved["weights"][0].tolist() == [0.5, 0.5]
    other = StepWindow()
    other.restore(saved, "cpu")
    assert [t.item() for t in other.loss] == [1.0, 2.0] and other.weights[0].tolist() == [0.5, 0.5]
    other.restore(None, "cpu")  # a checkpoint from before windows were kept
    assert len(other.loss) == 2
    w.clear()
    assert w.loss == [] and w.weights == [] and w.wait == 0.0 and w.clips == 0


def test_a_non_finite_loss_names_its_step():
    w = StepWindow()
    w.check_finite(5, Path("last.pt"))  # an empty window checks nothing
    w.loss = [torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(2.0)]
    with pytest.raises(NonFiniteLoss) as e:
        w.check_finite(12, Path("ck/last.pt"))  # steps 10, 11, 12: the second is step 11
    assert str(e.value) == "non-finite loss at step 11; the last good checkpoint is ck/last.pt"
    w.loss = [torch.tensor(float("inf"))]
    with pytest.raises(NonFiniteLoss, match="at step 4;"):
        w.check_finite(4, Path("x"))
    w.loss = [torch.tensor(1.0), torch.tensor(3.0)]
    w.check_finite(2, Path("x"))


def test_a_reason_with_tabs_and_a_path_with_spaces_are_kept_whole():
    items = BadItems([])
    _, new = items.count(batch([0], [("my clips/a b.mp4", "decoding failed:\tInvalidDataError:\tx")]), Dist(), "cpu",
                         preempt=False)
    assert new == [("my clips/a b.mp4", "decoding failed:\tInvalidDataError:\tx")]


class TwoRanks(Dist):
    """Rank 0 of a two-rank job whose other rank loaded ``other_seen`` items and met ``other_bad``."""

    def __init__(self, other_seen: int, other_bad: list, other_preempt: bool = False):
        super().__init__(rank=0, world=2)
        object.__setattr__(self, "other", (other_seen, other_bad, other_preempt))
        object.__setattr__(self, "devices", [])

    def sum(self, values, device):
        self.devices.append(device)
        seen, bad, preempt = self.other
        return [values[0] + seen, values[1] + len(bad), values[2] + int(preempt)]

    def gather_objects(self, obj):
        self.devices.append("gather")
        return [obj, self.other[1]]


class OneRank(Dist):
    """A single process that counts its collectives."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "gathers", [])

    def gather_objects(self, obj):
        self.gathers.append(obj)
        return [obj]


def test_every_rank_counts_every_ranks_bad_items_and_agrees_to_stop():
    items = BadItems([])
    ranks = TwoRanks(2, [("b.mp4", "cannot open")])
    stop, new = items.count(batch([0, 1], [("a.mp4", "truncated")]), ranks, "cuda:1", preempt=False)
    assert not stop and new == [("a.mp4", "truncated"), ("b.mp4", "cannot open")] and items.seen == 4
    assert ranks.devices == ["cuda:1", "gather"]  # counts reduced on the rank's own device, then the names
    quiet = TwoRanks(3, [])
    assert items.count(batch([2, 3]), quiet, "cpu", preempt=False) == (False, []) and items.seen == 9
    assert quiet.devices == ["cpu"]  # nothing bad anywhere: no second collective
    alone = OneRank()
    items.count(batch([5], [("d.mp4", "x")]), alone, "cpu", preempt=False)
    assert alone.gathers == [] and items.items[-1] == ("d.mp4", "x")  # one process gathers nothing
    # the other rank was signalled: this one stops too, before the batch, counting nothing
    stopping = TwoRanks(1, [("e.mp4", "y")], other_preempt=True)
    assert items.count(batch([4], [("c.mp4", "x")]), stopping, "cpu", False) == (True, [])
    assert items.seen == 10 and len(items.items) == 3 and stopping.devices == ["cpu"]  # a dropped batch: no gather


def test_a_new_window_is_empty_and_restores_onto_the_device():
    assert StepWindow().pending() == {"loss": [], "weights": []}
    w = StepWindow()
    w.restore({"loss": [torch.tensor(1.0)], "weights": [torch.ones(2)]}, "meta")
    assert w.loss[0].device.type == "meta" and w.weights[0].device.type == "meta"


def forked(body) -> int:
    """Run ``body()`` in a forked child (the code under test, as imported here) and return its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(3)  # never back into the test runner
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signalled_worker_exits_with_status_zero(sig):
    import time

    def worker():
        worker_exits_quietly(0)
        os.kill(os.getpid(), sig)
        time.sleep(30)

    assert forked(worker) == 0


def test_a_worker_dies_with_its_parent():
    """The worker's parent dies (as a killed rank does); the worker must not outlive it."""
    import time

    read, write = os.pipe()

    def parent():
        if os.fork() == 0:  # the worker
            worker_exits_quietly(0)
            os.write(write, f"{os.getpid()}\n".encode())
            time.sleep(60)
            os._exit(3)
        time.sleep(1.0)  # the worker has set its death signal by now

    assert forked(parent) == 3
    pid = int(os.read(read, 64).split()[0])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return  # gone
        if state == "Z":  # dead, waiting for its new parent to reap it
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"worker {pid} outlived its parent")
