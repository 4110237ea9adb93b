"""Calling the model on a block of rows, with the checks every method needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

Model = Callable[..., Tensor]
"""An ``nn.Module`` (preferred: its state is guarded) or any callable returning a Tensor."""


def run_model(model: Model, inputs: tuple[Tensor, ...], args: tuple[Any, ...] = ()) -> Tensor:
    """``model(*inputs, *args)``, checked to return one tensor with a row per input row.

    Raises:
        TypeError: the model returned something other than a tensor.
        ValueError: the output's first dimension differs from the inputs' rows.
    """
    output = model(*inputs, *args)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model must return a Tensor of shape (N, ...), got {type(output).__name__}; "
            "wrap it (e.g. lambda x: model(x)['logits']) to select the output to explain"
        )
    rows = inputs[0].shape[0]
    if output.dim() == 0 or output.shape[0] != rows:
        raise ValueError(
            f"the model's output must have one row per input row: {rows} rows went in, "
            f"output has shape {tuple(output.shape)}"
        )
    return output
