"""Input handling shared by every method.

A model may take one tensor or several. Methods work internally on a tuple of
tensors that all share the batch dimension ``N`` and hand results back in the
form the caller used (a tensor for a tensor, a tuple for a tuple, a list for a
list), so no method repeats that formatting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

InputsLike = Tensor | tuple[Tensor, ...] | list[Tensor]
"""A batch ``(N, ...)`` or a tuple/list of batches sharing ``N``."""


@dataclass(frozen=True)
class InputBatch:
    """The caller's inputs as a tuple of tensors, plus how to give results back.

    Attributes:
        tensors: the input tensors, each ``(N, ...)``, detached from any graph.
        form: ``"tensor"``, ``"tuple"`` or ``"list"``: the caller's container.
    """

    tensors: tuple[Tensor, ...]
    form: str

    @property
    def n(self) -> int:
        """The batch size ``N`` shared by all inputs."""
        return self.tensors[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def rows(self, index: Tensor) -> tuple[Tensor, ...]:
        """The inputs of the examples ``index`` (an integer tensor of rows)."""
        return tuple(t.index_select(0, index) for t in self.tensors)

    def block(self, start: int, stop: int) -> tuple[Tensor, ...]:
        """The inputs of examples ``start..stop-1`` (views, no copy)."""
        return tuple(t[start:stop] for t in self.tensors)

    def restore(self, results: Sequence[Tensor]) -> Any:
        """Return ``results`` (one per input) in the caller's container."""
        if self.form == "tensor":
            return results[0]
        if self.form == "list":
            return list(results)
        return tuple(results)


def as_input_batch(inputs: Any, *, name: str = "inputs", floating: bool = True, finite: bool = True) -> InputBatch:
    """Validate ``inputs`` and wrap them in an :class:`InputBatch`.

    Floating-point inputs must be finite (when ``finite``): a NaN or an
    infinity would give a map that is NaN, zero or meaningless without a word
    (a NaN image gives an all-zero saliency map), so it is refused up front,
    at the cost of one pass over the inputs per call.

    Raises:
        TypeError: ``inputs`` is not a tensor or a tuple/list of tensors, or a
            tensor is not floating point while ``floating`` is required.
        ValueError: an input has no batch dimension, an empty batch, holds NaN
            or infinite values, or the inputs disagree on ``N``.
    """
    if isinstance(inputs, Tensor):
        tensors: tuple[Any, ...] = (inputs,)
        form = "tensor"
    elif isinstance(inputs, (tuple, list)):
        if len(inputs) == 0:
            raise ValueError(f"{name} must hold at least one tensor, got an empty {type(inputs).__name__}")
        tensors = tuple(inputs)
        form = "tuple" if isinstance(inputs, tuple) else "list"
    else:
        raise TypeError(
            f"{name} must be a Tensor of shape (N, ...) or a tuple of such Tensors, got {type(inputs).__name__}"
        )
    for i, t in enumerate(tensors):
        label = name if form == "tensor" else f"{name}[{i}]"
        if not isinstance(t, Tensor):
            raise TypeError(f"{label} must be a Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"{label} must have a batch dimension (N, ...), got a 0-d tensor")
        if floating and not t.is_floating_point():
            raise TypeError(
                f"{label} must be a floating-point tensor to be differentiated, got dtype {t.dtype}; "
                "for integer inputs (token ids) attribute an embedding layer instead"
            )
    n = tensors[0].shape[0]
    if n == 0:
        raise ValueError(f"{name} must hold at least one example, got a batch of size 0")
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape[0] != n:
            raise ValueError(
                f"all inputs must share the batch size N: {name}[0] has N={n} but {name}[{i}] has N={t.shape[0]}"
            )
    if finite:
        for i, t in enumerate(tensors):
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                label = name if form == "tensor" else f"{name}[{i}]"
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"{label} must be finite, but holds {bad} NaN or infinite value(s); "
                    "replace them (e.g. torch.nan_to_num) before explaining"
                )
    return InputBatch(tuple(t.detach() for t in tensors), form)


@dataclass(frozen=True)
class ForwardArgs:
    """Extra arguments passed to the model after the inputs.

    Tensors among them are per-example (first dimension ``N``) and follow the
    rows a method evaluates; anything else is passed through unchanged.
    """

    args: tuple[Any, ...]

    def rows(self, index: Tensor) -> tuple[Any, ...]:
        """The arguments for the rows whose example numbers are ``index``."""
        return tuple(a.index_select(0, index.to(a.device)) if isinstance(a, Tensor) else a for a in self.args)

    def block(self, start: int, stop: int) -> tuple[Any, ...]:
        """The arguments for examples ``start..stop-1`` (views, no copy)."""
        return tuple(a[start:stop] if isinstance(a, Tensor) else a for a in self.args)


def as_forward_args(additional_forward_args: Any, n: int) -> ForwardArgs:
    """Wrap ``additional_forward_args`` (None, one object or a tuple of them).

    Raises:
        ValueError: a tensor among them does not have first dimension ``n``.
    """
    if additional_forward_args is None:
        return ForwardArgs(())
    args = additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and (a.dim() == 0 or a.shape[0] != n):
            shape = tuple(a.shape)
            raise ValueError(
                f"additional_forward_args[{i}] is a tensor of shape {shape}; tensors there must be "
                f"per-example with first dimension N={n} (they are expanded with the inputs). "
                "Pass other tensors through a closure or a module attribute instead"
            )
    return ForwardArgs(args)


def as_result_tuple(result: Any, producer: str) -> tuple[Tensor, ...]:
    """A wrapped method's result as a tuple of tensors (it returns a tensor or a tuple/list of them)."""
    if isinstance(result, Tensor):
        return (result,)
    if isinstance(result, (tuple, list)) and all(isinstance(r, Tensor) for r in result):
        return tuple(result)
    raise TypeError(f"{producer} must return a Tensor or a tuple of Tensors, got {type(result).__name__}")
