"""Methods built on (possibly rule-modified) gradients of a score w.r.t. the inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .attribution import Attribution
from .core.backprop import backprop
from .core.batching import BatchSize, check_batch_size, map_blocks
from .core.forward import run_model
from .core.graph import recording
from .core.inputs import InputBatch, InputsLike, as_forward_args, as_input_batch
from .rules import BackwardRule
from .targets import Target, TargetLike, resolve_target


def _leaf(t: Tensor) -> Tensor:
    # Inference tensors cannot join a graph: copy those; others are shared, not copied.
    source = t.clone() if t.is_inference() else t.detach()
    return source.requires_grad_(True)


class GradientAttribution(Attribution):
    """Base of methods that backpropagate a score to the inputs.

    A subclass picks a backward rule (class attribute :attr:`rule`; None for
    the plain gradient) and what to do with the resulting (pseudo-)gradients.
    Gradients are taken with ``torch.autograd.grad`` on fresh leaves, so
    nothing is written to ``.grad`` of the caller's tensors or parameters.
    """

    #: Backward rule applied to the rectifiers, or None for the plain gradient.
    rule: BackwardRule | None = None

    def _block_gradients(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, ...]:
        """Gradients of the target scores w.r.t. one block of rows.

        Each result is ``rows[i].shape``, or ``(R, K, ...)`` for a target with
        ``K`` scores per row: one forward pass, ``K`` backward passes.
        """
        leaves = tuple(_leaf(r) for r in rows)
        # The model sees copies of the leaves, so in-place ops on its inputs are legal.
        # Under a rule the forward is recorded, so the model's own gradient hooks run in the rule's backward.
        with recording(self.rule) as trace:
            output = run_model(self.model, tuple(leaf.clone() for leaf in leaves), args)
        # Detached: a map never carries a graph back to the caller, whatever the backward rule did.
        return tuple(g.detach() for g in backprop(target.scores(output, example), leaves, self.rule, trace=trace))

    def _gradients_at_inputs(
        self,
        inputs: InputsLike,
        target: TargetLike,
        batch_size: BatchSize,
        additional_forward_args: Any,
    ) -> tuple[InputBatch, tuple[Tensor, ...]]:
        """Validate a call and return the inputs with their gradients, ``batch_size`` rows at a time."""
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        batch_size = check_batch_size(batch_size)

        def run(start: int, stop: int) -> tuple[Tensor, ...]:
            index = torch.arange(start, stop, device=batch.device)
            # A top-1 target is read off this very forward pass on the clean rows.
            return self._block_gradients(batch.block(start, stop), args.block(start, stop), resolved, index)

        with self._guard():
            blocks = map_blocks(batch.n, batch_size, run)
        grads = tuple(parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*blocks))
        return batch, grads


def times_inputs(inputs: tuple[Tensor, ...], maps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``x * m`` per input, aligning ``x`` with a map's target dimension ``K`` if it has one."""
    return tuple(m * (x.unsqueeze(1) if m.dim() == x.dim() + 1 else x) for x, m in zip(inputs, maps))
