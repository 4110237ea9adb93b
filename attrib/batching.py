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
from collections.abc import Iterator

import torch
from torch import Tensor


def check_batch_size(batch_size: object, name: str = "batch_size") -> int | None:
    """Validate a ``batch_size`` argument: None (everything at once) or a positive int."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            f"{name} must be a positive int (the most rows in one forward pass) or None, got {batch_size!r}"
        )
    return int(batch_size)


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
