"""Reading a dataset one shard at a time: a ``DataLoader`` whose batches are shards of the fixed grid."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class _ShardSampler(Sampler[list[int]]):
    """The item numbers of each shard ``(start, stop)``, one batch per shard."""

    def __init__(self, shards: Sequence[tuple[int, int]]) -> None:
        self.shards = list(shards)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(range(start, stop)) for start, stop in self.shards)

    def __len__(self) -> int:
        return len(self.shards)


def shard_batches(
    dataset: Dataset[Any], shards: Sequence[tuple[int, int]], *, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[tuple[int, int], Any]]:
    """``((start, stop), batch)`` for each shard, ``batch`` the collated items ``start .. stop-1``.

    Items are read by a ``torch.utils.data.DataLoader`` with ``num_workers`` processes, in shard order.
    """
    loader = DataLoader(dataset, batch_sampler=_ShardSampler(shards), num_workers=num_workers, pin_memory=pin_memory)
    return zip(list(shards), loader)


def split_batch(batch: Any) -> tuple[Tensor, object]:
    """Inputs and labels (None if the items carry none) of a collated batch of items."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    what = type(batch[0]).__name__ if isinstance(batch, (list, tuple)) and batch else type(batch).__name__
    raise TypeError(
        f"dataset items must be a Tensor or a tuple (input Tensor, label, ...); the input is a {what} "
        "(give the dataset a transform that makes tensors, e.g. torchvision.transforms.ToTensor())"
    )
