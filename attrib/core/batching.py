"""Splitting work into blocks of rows and summing rows back per example.

Methods that evaluate the model on many copies of each example (steps of a
path integral, noisy samples) lay the copies out *sample-major*: global row
``r = s * N + n`` is copy ``s`` of example ``n``. They evaluate ``batch_size``
consecutive rows at a time, so memory is bounded by ``batch_size`` whatever the
number of copies, and fold each block into per-example sums with
:func:`add_rows_per_example`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch
from torch import Tensor

BatchSize = int | Literal["auto"] | None
"""The ``batch_size`` argument of every method: the most rows in one forward pass.

``None`` runs everything at once; ``"auto"`` starts with every row and halves
the block on an out-of-memory error (see :func:`map_blocks`).
"""

T = TypeVar("T")

#: The largest first block ``batch_size="auto"`` tries.
AUTO_START = 1024


def check_batch_size(batch_size: object, name: str = "batch_size") -> BatchSize:
    """Validate a ``batch_size`` argument: None (everything at once), ``"auto"`` or a positive int."""
    if batch_size is None:
        return None
    if batch_size == "auto":
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            f"{name} must be a positive int (the most rows in one forward pass), 'auto' or None, got {batch_size!r}"
        )
    return int(batch_size)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure (CUDA or CPU) that a smaller block may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def map_blocks(total: int, batch_size: BatchSize, fn: Callable[[int, int], T]) -> list[T]:
    """``[fn(start, stop) for each block]`` over rows ``0..total-1``, at most ``batch_size`` rows a block.

    With ``batch_size="auto"`` the first block has ``min(total, AUTO_START)``
    rows; a block that runs out of memory is retried at half the size (blocks
    that succeeded are kept, never recomputed), and the size that worked is
    kept for the rest of the call. Block boundaries then differ from a fixed
    ``batch_size`` run, but every method's result is independent of them.

    Raises:
        torch.OutOfMemoryError: a single row does not fit.
    """
    results: list[T] = []
    fold_blocks(total, batch_size, fn, lambda start, stop, result: results.append(result))
    return results


def fold_blocks(
    total: int,
    batch_size: BatchSize,
    compute: Callable[[int, int], T],
    fold: Callable[[int, int, T], None],
) -> None:
    """``fold(start, stop, compute(start, stop))`` for each block of rows ``0..total-1``, in order.

    Like :func:`map_blocks`, but for methods that accumulate as they go
    (running sums over steps or noisy samples) so that memory stays bounded by
    one block: only ``compute`` is retried on an out-of-memory error with
    ``batch_size="auto"``; ``fold`` runs once per successful block and is never
    repeated, so an accumulator cannot count a block twice.

    Raises:
        torch.OutOfMemoryError: a single row does not fit (or ``fold`` ran out of memory).
    """
    if batch_size != "auto":
        for start, stop in row_blocks(total, batch_size):
            fold(start, stop, compute(start, stop))
        return
    size = max(1, min(total, AUTO_START))
    start = 0
    while start < total:
        stop = min(start + size, total)
        try:
            result = compute(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error) or stop - start == 1:
                raise
            del error
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, (stop - start) // 2)
            continue
        fold(start, stop, result)
        del result
        start = stop


def row_blocks(total: int, batch_size: int | None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of at most ``batch_size`` rows."""
    step = total if batch_size is None else batch_size
    for start in range(0, total, max(step, 1)):
        yield start, min(start + step, total)


def sample_major_rows(start: int, stop: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Example and copy numbers ``(n_r, s_r)`` of global rows ``start..stop-1``."""
    rows = torch.arange(start, stop, device=device)
    return rows % n, torch.div(rows, n, rounding_mode="floor")


def add_rows_per_example(acc: Tensor, block: Tensor, start: int, weights: Tensor | None = None) -> None:
    """``acc[n] += sum_s weights[s] * block[row(s, n) - start]`` over the rows in ``block``.

    ``acc`` is ``(N, ...)``; ``block`` holds the sample-major global rows
    ``start .. start + len(block) - 1`` with the same trailing shape; ``weights``
    (optional) holds one weight per copy ``s`` over all copies. A block is a
    partial copy at its head, whole copies in the middle and a partial copy at
    its tail, so three vectorised adds suffice and the sums are deterministic.
    """
    n = acc.shape[0]
    rows = block.shape[0]
    trailing = (1,) * (block.dim() - 1)

    def weighted(part: Tensor, copy: int) -> Tensor:
        return part if weights is None else part * weights[copy].to(part.dtype)

    offset = 0
    head_copy, head_example = divmod(start, n)
    if head_example:
        take = min(n - head_example, rows)
        acc[head_example : head_example + take] += weighted(block[:take], head_copy)
        offset = take
    whole = (rows - offset) // n
    if whole:
        first_copy = (start + offset) // n
        middle = block[offset : offset + whole * n].reshape(whole, n, *block.shape[1:])
        if weights is None:
            acc += middle.sum(0)
        else:
            w = weights[first_copy : first_copy + whole].to(block.dtype).view(whole, 1, *trailing)
            acc += (middle * w).sum(0)
        offset += whole * n
    if offset < rows:
        tail_copy = (start + offset) // n
        acc[: rows - offset] += weighted(block[offset:], tail_copy)
