"""The order in which a stage sees its data, as a pure function of (seed, position).

The training stream is the concatenation of seeded permutations of the dataset, one per
epoch. Micro-batch ``m`` covers stream positions ``[m * B, (m + 1) * B)`` for the global
batch ``B``; with ``W`` processes, rank ``r`` takes the ``r``-th slice of ``B / W`` of them.
So a resumed run continues exactly where it stopped (the position is just the micro-batch
counter), and ``W`` processes see together exactly the batches one process would.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


class StreamBatchSampler:
    """Yields the dataset indices of each micro-batch of this rank, from ``start`` on.

    Each index is encoded as ``epoch * n + i`` so the dataset wrapper can tell items the
    epoch they are drawn in (captions are drawn per epoch); :class:`EpochView` decodes it.
    """

    def __init__(self, n: int, global_batch: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if n <= 0:
            raise ValueError("the training set is empty")
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} does not split evenly over {world} processes")
        self.n, self.batch, self.seed, self.start = n, global_batch, seed, start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch // self.world
        m = self.start
        cache: dict[int, torch.Tensor] = {}
        while True:
            begin = m * self.batch + self.rank * local
            out = []
            for pos in range(begin, begin + local):
                epoch, i = divmod(pos, self.n)
                if epoch not in cache:
                    cache = {epoch: epoch_permutation(self.n, self.seed, epoch)}
                out.append(epoch * self.n + int(cache[epoch][i]))
            yield out
            m += 1


class EpochView(torch.utils.data.Dataset):
    """Decodes :class:`StreamBatchSampler` indices: item ``i`` of the dataset in ``epoch``.

    Datasets whose items depend on the epoch (a caption drawn per epoch) expose
    ``set_epoch(epoch)``; each worker holds its own copy, so setting it per item is safe.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, code: int) -> Any:
        epoch, i = divmod(int(code), self.n)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[i]
