"""Base of methods that explain by scoring perturbed copies of the input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .attribution import Attribution
from .core.batching import BatchSize, sample_major_rows
from .core.inputs import ForwardArgs
from .targets import Target

PerturbRows = Callable[[Tensor, Tensor], tuple[Tensor, ...]]
"""``(example, copy) -> rows``: the perturbed inputs of the given (example, copy) pairs."""


class PerturbationAttribution(Attribution):
    """A method that only evaluates the model (no gradients) on perturbed inputs.

    Subclasses describe ``n_copies`` perturbed copies of every example through
    a ``perturb(example, copy)`` function and get back the target score of
    each copy from :meth:`_perturbed_scores`, which keeps at most
    ``batch_size`` rows in one forward pass. Scores are one number per row,
    so holding all of them is cheap even for thousands of copies.
    """

    def _perturbed_scores(
        self,
        n: int,
        n_copies: int,
        perturb: PerturbRows,
        args: ForwardArgs,
        target: Target,
        batch_size: BatchSize,
        device: torch.device,
    ) -> Tensor:
        """Scores ``(n_copies, n)`` (or ``(n_copies, n, K)``) of every copy of every example."""

        def block(start: int, stop: int) -> tuple[tuple[Tensor, ...], tuple[Any, ...], Tensor]:
            example, copy = sample_major_rows(start, stop, n, device)
            return perturb(example, copy), args.rows(example), example

        scores = self._evaluate(n_copies * n, block, target.scores, batch_size)
        return scores.view(n_copies, n, *scores.shape[1:])
