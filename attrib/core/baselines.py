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

    Raises:
        ValueError: a tuple of the wrong length or a tensor that does not broadcast.
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
        elif isinstance(entry, numbers.Real) and not isinstance(entry, bool):
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
