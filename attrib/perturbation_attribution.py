"""Base of methods that explain by scoring perturbed copies of the input."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .attribution import Attribution
from .batching import row_blocks, sample_major_rows
from .forward import run_model
from .inputs import ForwardArgs
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
        batch_size: int | None,
        device: torch.device,
    ) -> Tensor:
        """Scores ``(n_copies, n)`` (or ``(n_copies, n, K)``) of every copy of every example."""
        blocks = []
        with self._guard(), torch.no_grad():
            for start, stop in row_blocks(n_copies * n, batch_size):
                example, copy = sample_major_rows(start, stop, n, device)
                output = run_model(self.model, perturb(example, copy), args.rows(example))
                blocks.append(target.scores(output, example))
        scores = torch.cat(blocks)
        return scores.view(n_copies, n, *scores.shape[1:])
