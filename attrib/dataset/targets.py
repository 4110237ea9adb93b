"""The ``target`` of a dataset run, turned into a method's target for one batch of items.

``explain_dataset`` accepts ``None`` (top-1), ``"label"`` (each item's label),
an ``int`` class, or a callable ``(output, labels) -> scores``. Methods call a
callable target on blocks of perturbed or interpolated rows that may mix
examples, so the labels must follow the rows: the callable becomes a
:meth:`attrib.targets.Target.of_rows` target that hands it, for every output
row, the label of the example that row belongs to.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..targets import Target, TargetLike

LabelledScores = Callable[[Tensor, Any], Tensor]
DatasetTarget = None | int | str | LabelledScores

_EXPECTED = "expected None (top-1), 'label', an int class index, or a callable (output, labels) -> scores"


def check_dataset_target(target: object) -> None:
    """Raise a clear error unless ``target`` is a valid ``explain_dataset`` target."""
    if target is None or target == "label":
        return
    if isinstance(target, str):
        raise ValueError(f"target must be None, 'label', an int or a callable, got the string {target!r}; {_EXPECTED}")
    if isinstance(target, bool) or (isinstance(target, numbers.Real) and not isinstance(target, numbers.Integral)):
        raise ValueError(f"target must be an integer class index, got {target!r}; {_EXPECTED}")
    if isinstance(target, numbers.Integral):
        if target < 0:
            raise ValueError(f"target class index must be >= 0, got {target}")
        return
    if not callable(target):
        raise TypeError(f"target has unsupported type {type(target).__name__}; {_EXPECTED}")


def labelled_target(fn: LabelledScores, labels: Tensor | None, n: int) -> Target:
    """``fn(output, labels)`` as a target for ``n`` examples, the rows of ``labels`` following the output rows."""
    if labels is None:
        return Target.of_rows(lambda output, example: fn(output, None), n)
    return Target.of_rows(lambda output, example: fn(output, labels.index_select(0, example.to(labels.device))), n)


def batch_target(target: DatasetTarget, labels: object, n: int, device: torch.device) -> TargetLike:
    """The method's target for a batch of ``n`` items whose collated labels are ``labels`` (None if none)."""
    if target is None or isinstance(target, int):
        return target
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(
            f"target {target!r} needs labels that collate to a Tensor (ints, or tensors of class indices); "
            f"the items' labels collate to a {type(labels).__name__}"
        )
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs dataset items (input, label, ...); these items carry no label")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() not in (1, 2):
            raise ValueError(
                "target='label' needs integer class labels (one per item, or K per item), "
                f"got labels of dtype {labels.dtype} and shape {tuple(labels.shape)}"
            )
        return labels.to(device)
    assert callable(target)
    return labelled_target(target, None if labels is None else labels.to(device), n)
