"""Backpropagating target scores to chosen tensors, one backward pass per score column."""

from __future__ import annotations

import torch
from torch import Tensor

from ..rules import BackwardRule
from .graph import ForwardTrace, GraphBackward


def _gradient(score: Tensor, leaves: tuple[Tensor, ...], retain: bool) -> tuple[Tensor, ...]:
    if not score.requires_grad:  # the score does not depend on these tensors at all
        return tuple(torch.zeros_like(leaf) for leaf in leaves)
    grads = torch.autograd.grad(score, leaves, retain_graph=retain, allow_unused=True)
    return tuple(torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves))


def seed_signals(scores: Tensor, root: Tensor) -> list[Tensor] | None:
    """The signal each score column gives ``root``: its plain gradient (a one-hot for a class score).

    ``scores`` is ``(R,)`` (one signal) or ``(R, K)`` (``K`` signals). None
    if the scores are not computed from ``root`` at all (a
    :class:`attrib.Neuron` target reads an inner layer, not the output).
    """
    columns = [scores] if scores.dim() == 1 else list(scores.unbind(1))
    if root is scores:
        eye = torch.eye(len(columns), dtype=scores.dtype, device=scores.device)
        if scores.dim() == 1:
            return [torch.ones_like(scores)]
        return [eye[j].expand_as(scores) for j in range(len(columns))]
    if not scores.requires_grad:  # constant scores: nothing to carry back
        return [torch.zeros_like(root) for _ in columns]
    seeds = [torch.autograd.grad(c.sum(), root, retain_graph=True, allow_unused=True)[0] for c in columns]
    if all(seed is None for seed in seeds):
        return None
    return [torch.zeros_like(root) if seed is None else seed for seed in seeds]


def rooted_seeds(scores: Tensor, output: object) -> tuple[Tensor, list[Tensor]]:
    """Where a backward rule starts (the root) and the seed signal of each score column there.

    The root is the model ``output`` the scores were read from, seeded with
    the scores' plain gradients. A tuple/dict output (read by a callable
    target) is no single root, and a :class:`attrib.Neuron`'s scores do not
    come from the output at all: the rule then starts at the scores themselves.
    """
    if isinstance(output, Tensor) and output.requires_grad:
        seeds = seed_signals(scores, output)
        if seeds is not None:
            return output, seeds
    seeds = seed_signals(scores, scores)
    assert seeds is not None
    return scores, seeds


def backprop(
    scores: Tensor,
    leaves: tuple[Tensor, ...],
    rule: BackwardRule | None = None,
    *,
    output: object = None,
    trace: ForwardTrace | None = None,
) -> tuple[Tensor, ...]:
    """Gradients of ``scores`` w.r.t. each leaf, with the backward ``rule`` set applied.

    ``scores`` is ``(R,)`` (one score per row) or ``(R, K)``; each result has
    its leaf's shape ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per row.
    Rows must not interact (eval-mode models), so the gradient of the summed
    scores gives every row its own gradient. ``K`` scores cost one forward
    pass and ``K`` backward passes. Nothing is written to any ``.grad``.

    Without a rule this is ``torch.autograd.grad``. With one, the signal is
    carried by :class:`attrib.core.graph.GraphBackward`; if ``output`` (the
    model output the scores were read from) is given, the rule applies from
    there down, seeded with each score's plain gradient w.r.t. ``output`` (a
    one-hot for a class score, as TorchRay seeds its backward pass); ``trace``
    is what the forward pass recorded for the rule
    (:func:`attrib.core.graph.recording`).
    """
    if rule is None:
        if scores.dim() == 1:
            return _gradient(scores.sum(), leaves, retain=False)
        k = scores.shape[1]
        per_target = [_gradient(scores[:, j].sum(), leaves, retain=j < k - 1) for j in range(k)]
        return tuple(torch.stack(grads, dim=1) for grads in zip(*per_target))
    root, seeds = rooted_seeds(scores, output)
    carry = GraphBackward(root, leaves, rule, trace)
    per_seed = [carry(seed) for seed in seeds]
    if scores.dim() == 1:
        return tuple(per_seed[0])
    return tuple(torch.stack(grads, dim=1) for grads in zip(*per_seed))
