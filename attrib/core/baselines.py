"""The ``baselines`` argument: the reference input a path method starts from."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from .inputs import InputBatch

_EXPECTED = (
    "expected None (zeros), a number, a tensor broadcastable to the input's shape, or a tuple of these per input"
)


def as_baselines(baselines: Any, batch: InputBatch) -> tuple[Tensor, ...]:
    """One baseline per input, broadcast to that input's shape ``(N, ...)``.

    ``None`` means zeros; a number fills the input's shape; a tensor may have
    the input's shape, ``(1, ...)``, or any shape that broadcasts to it. For
    tuple inputs pass a tuple with one such entry per input.

    For an integer input (token ids) the baseline must be integral too (a pad
    or mask id): ``0.5`` or a float tensor with fractions would be truncated
    silently, so it is refused.

    Raises:
        ValueError: a tuple of the wrong length, a tensor that does not broadcast,
            or a fractional baseline for an integer input.
        TypeError: an entry of an unsupported type.
    """
    inputs = batch.tensors
    if isinstance(baselines, (tuple, list)):
        if len(baselines) != len(inputs):
            raise ValueError(
                f"baselines must have one entry per input ({len(inputs)}), got {len(baselines)}; {_EXPECTED}"
            )
        entries = tuple(baselines)
    else:
        entries = (baselines,) * len(inputs)
    out = []
    for i, (entry, x) in enumerate(zip(entries, inputs)):
        label = "baselines" if len(inputs) == 1 else f"baselines[{i}]"
        if entry is None:
            out.append(torch.zeros_like(x))
            continue
        if not x.is_floating_point() and not x.is_complex():
            _check_integral(entry, label, x.dtype)
        if isinstance(entry, numbers.Real) and not isinstance(entry, bool):
            out.append(torch.full_like(x, float(entry)))
        elif isinstance(entry, Tensor):
            try:  # expand_as succeeds exactly when the entry broadcasts to the input's shape
                out.append(entry.detach().to(device=x.device, dtype=x.dtype).expand_as(x))
            except RuntimeError:
                raise ValueError(
                    f"{label} of shape {tuple(entry.shape)} does not broadcast to the input's shape {tuple(x.shape)}"
                ) from None
        else:
            raise TypeError(f"{label} has unsupported type {type(entry).__name__}; {_EXPECTED}")
    return tuple(out)


def _check_integral(entry: object, label: str, dtype: torch.dtype) -> None:
    """Refuse a baseline with fractions for an integer input, which a cast would truncate silently."""
    if isinstance(entry, numbers.Real) and not isinstance(entry, bool):
        fractional = not float(entry).is_integer()
    elif isinstance(entry, Tensor) and (entry.is_floating_point() or entry.is_complex()):
        fractional = bool((entry != entry.round()).any()) if entry.is_floating_point() else True
    else:
        return
    if fractional:
        raise ValueError(
            f"{label} must hold whole numbers for an input of dtype {dtype} (token ids: a pad or mask id), "
            "got fractional values that would be truncated"
        )
