"""Work split across the processes torchrun (or accelerate launch) starts, for the commands
that are not training (training goes through accelerate: tta_core.training.engine)::

    torchrun --nproc_per_node 4 -m tta_core.cli RECIPE sample --prompts prompts.txt --out out/
    torchrun --nproc_per_node 4 -m tta_core.cli RECIPE prepare

Work is cut into blocks numbered as one process numbers them (sampling batches, blocks of
clips to decode); block k is rank k mod world's (:meth:`Part.mine`), done exactly as one
process does it, and rank 0 writes what there is one of (a manifest, a cache index) once
every rank is done. The process group is torch.distributed's (nccl on GPUs, gloo on CPUs):
nothing home-made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Part:
    """This process's share of a generation: batch k is its own when k % world == rank."""

    rank: int
    world: int

    def mine(self, batch: int) -> bool:
        return batch % self.world == self.rank

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str | None) -> tuple[Part | None, str | None]:
    """Under a multi-process launch: join the process group (nccl where this process runs on
    CUDA, else gloo) and return this process's part and device (cuda:LOCAL_RANK unless
    ``device`` says cpu). Else (None, ``device``)."""
    if not launched():
        return None, device
    import torch.distributed as dist

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(torch.device(device))
    elif device in (None, "auto"):
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Part(dist.get_rank(), dist.get_world_size()), device


def gather(values: list[Any], part: Part) -> list[Any]:
    """Every rank's ``values``, concatenated in rank order, on rank 0 ([] on the others)."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * part.world if part.main else None
    dist.gather_object(values, out, dst=0)
    return [v for chunk in out for v in chunk] if part.main else []


def all_gather(value: Any, part: Part) -> list[Any]:
    """``value`` from every rank, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * part.world
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait here until every rank arrives."""
    import torch.distributed as dist

    dist.barrier()


def leave(part: Part | None, wait: bool = True) -> None:
    """Leave the process group, first waiting for every rank (``wait``; not after an error,
    when the others may never arrive: the launcher stops them)."""
    if part is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
