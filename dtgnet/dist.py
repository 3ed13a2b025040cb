"""This process's place in a torchrun job, and every collective dtgnet uses, in one wrapper.

Training (DDP, and its ranks' agreement on errors, bad items and preemption) and sharded bulk work (``data
prepare``, ``teacher cache``) go through :class:`Dist`; alone (no ``WORLD_SIZE``), every call is a no-op on one
rank, so callers never branch on the world size themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """Rank ``rank`` of ``world`` (0 of 1 alone); ``local_rank`` picks the GPU on a node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_objects(self, objs: list) -> list:
        """Rank 0's list of picklable objects, on every rank."""
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(objs, src=0)
        return objs

    def sum(self, values: list[int], device) -> list[int]:
        """Element-wise sum of every rank's integers."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        counts = torch.tensor(values, device=device)
        dist.all_reduce(counts)
        return counts.tolist()

    def gather(self, x: torch.Tensor, with_grad: bool) -> torch.Tensor:
        """Concatenate every rank's ``(B, D)`` into the global ``(world * B, D)``; with ``with_grad`` the
        gradient flows back to each rank's own rows."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        if with_grad:
            import torch.distributed.nn.functional as dist_fn

            return torch.cat(dist_fn.all_gather(x))
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def average_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of ``optimizer``'s parameters over the ranks (what DDP does inside its
        backward; for steps that run their passes outside it, as micro-batches do), in one flat all-reduce."""
        if self.world == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        for p in params:  # a parameter no pass reached contributes zeros, as in DDP
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP over the ranks (synchronised batch norm on GPUs); the module itself in one process."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def default_workers() -> int:
    """This process's share of the cores it may use (its affinity mask, not the machine's count): under
    torchrun, the processes on one machine split them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def init_distributed(timeout_s: float | None = 1800.0, backend: str | None = None) -> Dist:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...);
    a plain single-process run has no such variables. ``backend``: nccl on GPUs, else gloo (sharded bulk
    work asks for gloo: it only exchanges small objects)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend, timeout=timeout)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
