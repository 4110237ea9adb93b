"""``evaluate_dataset``: a per-item metric over a stored run, computed where the items are and gathered."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .distributed import local_device, rank_context, reduce_across_ranks
from .loading import shard_batches
from .store import MapStore, shard_grid, shard_name

ShardMetric = Callable[[Tensor, tuple[Any, ...]], Tensor]
"""``(maps, items) -> (n,) scores`` of one shard: its stored maps and the dataset's items ``(input, label, ...)``."""


def evaluate_dataset(
    metric: ShardMetric,
    store: MapStore | str | os.PathLike[str],
    dataset: Dataset[Any],
    *,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Score every stored map of a finished run: ``(N,)`` per-item scores, the same on every rank.

    For each shard, ``metric(maps, items)`` gets the shard's maps ``(n, *map_shape)``
    and its dataset items collated as a tuple ``(inputs, labels, ...)`` (a
    1-tuple for tensor items), both on ``device``, and returns ``(n,)`` scores
    (bool or float). Under ``torchrun`` each rank scores the shards it would
    have computed (shard ``c`` on rank ``c % world_size``) and the scores are
    summed across ranks over disjoint positions (:func:`reduce_across_ranks`),
    so every rank returns all ``N`` scores in item order, as float64 on the CPU.
    Aggregate them as the metric prescribes (a mean, a per-class mean).

    Example:
        >>> from attrib.metrics import PointingGame, Deletion
        >>> hits = evaluate_dataset(lambda maps, b: PointingGame(b[2])(maps), store, voc)   # items (x, y, mask)
        >>> auc = evaluate_dataset(lambda maps, b: Deletion(model, b[0], b[1])(maps), store, voc)
        >>> hits.mean(), auc.mean()

    Raises:
        ValueError: the run is not complete, or the dataset's length differs from the run's.
        TypeError: ``metric`` does not return one score per item.
    """
    if not isinstance(store, MapStore):
        store = MapStore(store)
    if not store.complete:
        done = f"{len(store)}/{store.length} items"
        raise ValueError(f"the run in {str(store.path)!r} is not complete ({done}); resume it")
    length = len(dataset)  # type: ignore[arg-type]
    if length != store.length:
        raise ValueError(f"dataset has {length} items but the run in {str(store.path)!r} has {store.length}")
    if not callable(metric):
        raise TypeError(f"metric must be a callable (maps, items) -> (n,) scores, got {type(metric).__name__}")
    from ..metrics import Metric

    if isinstance(metric, Metric):
        name = type(metric).__name__
        raise TypeError(
            f"metric must be a callable (maps, items) -> (n,) scores; an attrib.metrics.{name} binds its data "
            f"first, so bind it per shard: lambda maps, items: {name}(...)(maps)"
        )
    context = rank_context()
    target = torch.device(device) if device is not None else local_device()
    mine = [s for c, s in enumerate(shard_grid(store.length, store.shard_size)) if context.owns(c)]
    scores = torch.zeros(store.length, dtype=torch.float64)
    try:
        for (start, stop), batch in shard_batches(dataset, mine, num_workers=num_workers):
            items = (batch,) if isinstance(batch, Tensor) else tuple(batch)
            items = tuple(t.to(target) if isinstance(t, Tensor) else t for t in items)
            maps = torch.from_numpy(np.load(store.path / shard_name(start, stop), allow_pickle=False)).to(target)
            result = metric(maps, items)
            if not isinstance(result, Tensor) or result.shape != (stop - start,):
                got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
                raise TypeError(f"metric must return one score per item, shape ({stop - start},); got {got}")
            scores[start:stop] = result.detach().to("cpu", torch.float64)
    except Exception:
        context.all_ok(False)
        raise
    if not context.all_ok(True):
        raise RuntimeError("another rank of this job failed while evaluating the run; see its error")
    return reduce_across_ranks(scores)
