"""Dataset-scale runs: explain every item of a dataset, resumably, sharded over ``torchrun`` ranks.

>>> store = attrib.explain_dataset(attrib.Saliency(model), val_set, "runs/saliency", target="label")
>>> store[17]                      # the map of item 17, read back from disk

See :func:`explain_dataset`, :class:`MapStore` (and the on-disk format in
:mod:`attrib.dataset.store`), :func:`evaluate_dataset` for metrics over a run.
"""

from .distributed import RankContext, local_device, rank_context, reduce_across_ranks
from .evaluate import evaluate_dataset
from .explain import SettingsMismatchError, explain_dataset
from .store import MapStore

__all__ = [
    "MapStore",
    "RankContext",
    "SettingsMismatchError",
    "evaluate_dataset",
    "explain_dataset",
    "local_device",
    "rank_context",
    "reduce_across_ranks",
]
