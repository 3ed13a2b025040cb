"""Batch order: a seeded permutation per epoch, cut into global batches that the ranks share, resumable
part-way through an epoch."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """A seeded permutation per epoch, cut into global batches; rank r takes the r-th slice of every global
    batch, so the ranks' local batches concatenated in rank order are exactly the single-process batch. It
    can start part-way through an epoch (``start`` local items in)."""

    def __init__(self, n: int, seed: int, global_batch: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.global_batch, self.local_batch = global_batch, global_batch // world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        batches = perm[: self.n // self.global_batch * self.global_batch].view(-1, self.world, self.local_batch)
        return batches[:, self.rank].flatten().tolist()  # (steps * local_batch,)

    def __iter__(self):
        return iter([(self.epoch, i) for i in self._order()[self.start:]])

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch * self.local_batch - self.start


class LabelledShareSampler(ResumableSampler):
    """Semi-supervised batches: each global batch holds ``labelled`` items drawn from ``labelled_idx`` (cycled
    in fresh permutations, as there are few) and the rest from ``unlabelled_idx``; an epoch is one pass over
    the unlabelled items. Each global batch is shuffled before the ranks take their slices, so every rank
    sees both kinds."""

    def __init__(self, labelled_idx: list[int], unlabelled_idx: list[int], labelled: int, seed: int,
                 global_batch: int, rank: int = 0, world: int = 1):
        super().__init__(len(labelled_idx) + len(unlabelled_idx), seed, global_batch, rank, world)
        self.labelled_idx, self.unlabelled_idx = torch.tensor(labelled_idx), torch.tensor(unlabelled_idx)
        self.labelled, self.unlabelled = labelled, global_batch - labelled

    @property
    def steps_per_epoch(self) -> int:
        return len(self.unlabelled_idx) // self.unlabelled

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        steps = self.steps_per_epoch
        u = self.unlabelled_idx[torch.randperm(len(self.unlabelled_idx), generator=g)][: steps * self.unlabelled]
        cycles = -(-steps * self.labelled // len(self.labelled_idx))
        lab = torch.cat([self.labelled_idx[torch.randperm(len(self.labelled_idx), generator=g)]
                         for _ in range(cycles)])[: steps * self.labelled]
        batches = torch.cat([lab.view(steps, self.labelled), u.view(steps, self.unlabelled)], 1)  # (steps, B)
        mix = torch.stack([torch.randperm(self.global_batch, generator=g) for _ in range(steps)])
        batches = batches.gather(1, mix).view(steps, self.world, self.local_batch)
        return batches[:, self.rank].flatten().tolist()  # (steps * local_batch,)
