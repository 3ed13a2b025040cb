"""What a run tracks besides its weights: preemption signals, unreadable items, and the steps since the last
log line (their losses and teacher weights, which a checkpoint keeps so that a resumed run logs what an
uninterrupted one does)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..dist import Dist
from ..errors import DtgError, TooManyBadItems

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteLoss(DtgError):
    pass


def worker_exits_quietly(_worker_id: int) -> None:
    """A scheduler signals every process of a job. A DataLoader worker then exits with status 0: killed by
    the signal, it would make the loader raise at an arbitrary point of the main process's step; exiting
    cleanly, the loader only fails at the next fetch, where the main process, signalled too, stops.
    A worker also dies with its parent (Linux): an orphan would hold the parent's inherited sockets, such as
    a dead rank's gloo connections, open while torchrun restarts the job."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, lambda *_: os._exit(0))
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class Preemption:
    """SIGTERM / SIGUSR1 only set :attr:`signal`; the loop acts on it between steps."""

    def __init__(self):
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a preemption signal to another rank"

    @contextmanager
    def handlers(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def note(signum, _frame):
            self.signal = signum

        previous = {sig: signal.signal(sig, note) for sig in PREEMPT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class BadItems:
    """Unreadable items: those the list named (counted from the start) and those the loader met."""

    def __init__(self, listed: list[tuple[str, str]]):
        self.items: list[tuple[str, str]] = list(listed)
        self.seen = 0  # items loaded fine

    def count(self, raw: dict | None, dist: Dist, device, preempt: bool) -> tuple[bool, list[tuple[str, str]]]:
        """Count a batch's bad items over every rank and agree whether a preemption stops the run before it.
        Returns (stop, the batch's new bad items); one all-reduce gives every rank the same answers."""
        raw = raw or {"bad": [], "index": []}  # no batch: the loader went down with a preemption signal
        new = [tuple(line.split("\t", 1)) for text in raw["bad"] for line in filter(None, text.split("\n"))]
        seen, n_bad, stop = dist.sum([len(raw["index"]), len(new), int(preempt)], device)
        if dist.world > 1 and n_bad and not stop:
            new = [item for part in dist.gather_objects(new) for item in part]
        if stop:  # the batch is dropped: the resumed run reads it again
            return True, []
        self.seen += seen
        self.items += new
        return False, new

    def too_many(self, max_fraction: float) -> bool:
        attempted = self.seen + len(self.items)
        return bool(self.items) and attempted >= 20 and len(self.items) / attempted > max_fraction

    def error(self, max_fraction: float, checkpoint: Path) -> TooManyBadItems:
        attempted = self.seen + len(self.items)
        path, reason = self.items[0]
        return TooManyBadItems(
            f"{len(self.items)} of {attempted} items were unreadable ({len(self.items) / attempted:.1%} > "
            f"data.max_bad_fraction={max_fraction}); first: {path}: {reason}. Progress saved in {checkpoint}")


class StepWindow:
    """The steps since the last log line: time, data wait, clips, and each step's loss and teacher weights."""

    def __init__(self):
        self.loss: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.restart()

    def restart(self) -> None:
        self.t0, self.wait, self.clips = time.perf_counter(), 0.0, 0

    def clear(self) -> None:
        self.restart()
        self.loss, self.weights = [], []

    def pending(self) -> dict[str, list[torch.Tensor]]:
        return {"loss": [t.detach().cpu() for t in self.loss], "weights": [t.detach().cpu() for t in self.weights]}

    def restore(self, pending: dict | None, device) -> None:
        for key, values in (pending or {}).items():
            setattr(self, key, [t.to(device) for t in values])

    def check_finite(self, step: int, checkpoint: Path) -> None:
        """Raise on a non-finite loss among the window's steps (one host sync); ``step`` is the last one's."""
        if not self.loss:
            return
        losses = torch.stack(self.loss).float()
        if not torch.isfinite(losses).all():
            bad_step = step - len(losses) + int((~torch.isfinite(losses)).nonzero()[0])
            raise NonFiniteLoss(f"non-finite loss at step {bad_step + 1}; the last good checkpoint is {checkpoint}")
