"""Base of methods that explain by scoring perturbed copies of the input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .attribution import Attribution
from .core.batching import BatchSize, map_blocks
from .core.forward import run_model
from .targets import Target

BlockEnergy = Callable[[int, int], Tensor]
"""``(start, stop) -> energy``: the (differentiable) energy of rows ``start..stop-1``, any shape."""


class PerturbationAttribution(Attribution):
    """A method that explains by evaluating the model on perturbed copies of the input.

    One piece, :meth:`_copy_scores`, turns a block of perturbed copies into
    their target scores; it runs under whatever autograd mode the caller set,
    so two kinds of methods share it:

    * *scoring* methods (Occlusion, RISE) describe ``n_copies`` perturbed
      copies of every example through a ``perturb(example, copy)`` function
      and get back the score of each copy from :meth:`Attribution._perturbed_scores`,
      without gradients. Scores are one number per row, so holding all of
      them is cheap even for thousands of copies.
    * *optimising* methods (extremal perturbation) make copies from
      parameters that require gradients (masks), score them with
      :meth:`_copy_scores`, and accumulate the gradient of an energy over all
      rows with :meth:`_backward_blocks`.

    Both keep at most ``batch_size`` rows in one forward (and backward) pass,
    and run inside the state guard, so the model's parameters never require
    gradients and its state comes back as it was.
    """

    def _copy_scores(self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor) -> Tensor:
        """Target scores ``(R,)`` or ``(R, K)`` of ``R`` perturbed rows belonging to examples ``example`` (``(R,)``).

        Differentiable with respect to the rows when gradients are enabled.
        """
        return target.scores(run_model(self.model, rows, args), example)

    def _backward_blocks(self, n_rows: int, energy: BlockEnergy, batch_size: BatchSize) -> None:
        """Back-propagate ``-sum(energy)`` over ``n_rows`` rows, ``batch_size`` rows at a time.

        ``energy(start, stop)`` builds the rows ``start..stop-1`` from leaves
        that require gradients, runs them through the model (e.g. with
        :meth:`_copy_scores`) and returns their energy; the leaves' ``.grad``
        accumulate the gradient of the total energy's negative (what a
        minimising optimiser steps along), and each block's graph is freed
        before the next block runs. Call it inside ``self._guard()``.
        """

        def run(start: int, stop: int) -> None:
            torch.autograd.backward(-energy(start, stop).sum())

        with torch.enable_grad():
            map_blocks(n_rows, batch_size, run)
