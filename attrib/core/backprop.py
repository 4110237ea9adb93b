"""Backpropagating target scores to chosen tensors, one backward pass per score column."""

from __future__ import annotations

import torch
from torch import Tensor

from ..rules import BackwardRule, rule_applied


def _gradient(score: Tensor, leaves: tuple[Tensor, ...], retain: bool) -> tuple[Tensor, ...]:
    if not score.requires_grad:  # the score does not depend on these tensors at all
        return tuple(torch.zeros_like(leaf) for leaf in leaves)
    grads = torch.autograd.grad(score, leaves, retain_graph=retain, allow_unused=True)
    return tuple(torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves))


def backprop(scores: Tensor, leaves: tuple[Tensor, ...], rule: BackwardRule | None = None) -> tuple[Tensor, ...]:
    """Gradients of ``scores`` w.r.t. each leaf, with ``rule`` applied to the rectifiers.

    ``scores`` is ``(R,)`` (one score per row) or ``(R, K)``; each result has
    its leaf's shape ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per row.
    Rows must not interact (eval-mode models), so the gradient of the summed
    scores gives every row its own gradient. ``K`` scores cost one forward
    pass and ``K`` backward passes. Uses ``torch.autograd.grad``: nothing is
    written to any ``.grad``.
    """
    with rule_applied(scores, rule):
        if scores.dim() == 1:
            return _gradient(scores.sum(), leaves, retain=False)
        k = scores.shape[1]
        per_target = [_gradient(scores[:, j].sum(), leaves, retain=j < k - 1) for j in range(k)]
    return tuple(torch.stack(grads, dim=1) for grads in zip(*per_target))
