"""Deletion and insertion curves over tokens: the score as tokens go (or come back) in attribution order.

The token counterpart of :mod:`attrib.metrics.deletion`. A text has no
"grey pixel": a token is *removed* by replacing its id with a replacement id
(``<pad>`` by default), and, with ``mask_deleted=True``, by also zeroing its
attention mask, which is how a HuggingFace model forgets a position. Which
of these deletes a token depends on the model; the shipped text classifier
(:mod:`attrib.data.text_model`) drops ``<pad>`` positions when it is given
no attention mask, so there a replacement by ``<pad>`` is a deletion.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from ..core.batching import BatchSize
from ..core.forward import Model
from ..targets import TargetLike
from .base import ModelMetric, per_example, positive_int
from .deletion import SCORES, _softmax


class _TokenCurve(ModelMetric):
    """Shared machinery of :class:`TokenDeletion` and :class:`TokenInsertion`."""

    #: True: tokens come back in order (insertion); False: they go in order (deletion).
    _inserts: bool
    _floating_inputs = False

    def __init__(
        self,
        model: Model,
        input_ids: Tensor,
        target: TargetLike = None,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        replacement: int = 0,
        mask_deleted: bool = False,
        steps: int | None = None,
        score: str = "softmax",
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
        eval_mode: bool = True,
    ) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            shape = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) else type(
                input_ids).__name__
            raise ValueError(f"input_ids must be integer token ids (N, L), got {shape}")
        if isinstance(replacement, bool) or not isinstance(replacement, numbers.Integral):
            raise TypeError(f"replacement must be a token id (int), got {type(replacement).__name__}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
        self.steps: int | None = None if steps is None else positive_int(steps, "steps (None: one point per token)")
        mask = self._positions(attention_mask, input_ids, "attention_mask", default=True)
        special = self._positions(special_tokens_mask, input_ids, "special_tokens_mask", default=False)
        if mask_deleted and attention_mask is None:
            raise ValueError("mask_deleted=True needs the attention_mask whose removed positions are zeroed")
        self.mask_deleted: bool = bool(mask_deleted)
        inputs = (input_ids, attention_mask) if self.mask_deleted else input_ids
        super().__init__(model, inputs, target, additional_forward_args=additional_forward_args,
                         batch_size=batch_size, eval_mode=eval_mode)
        self.score: str = score
        self.replacement: int = int(replacement)
        #: ``(N, L)`` bool: the positions that are ranked and removed (real tokens, not special).
        self.deletable: Tensor = mask & ~special
        self.lengths: Tensor = self.deletable.sum(1)
        if bool((self.lengths == 0).any()):
            raise ValueError("every sequence needs at least one real, non-special token to remove; "
                             f"sequences {(self.lengths == 0).nonzero().flatten().tolist()} have none")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, score={self.score!r}, replacement={self.replacement})"

    @staticmethod
    def _positions(value: Tensor | None, ids: Tensor, name: str, *, default: bool) -> Tensor:
        if value is None:
            return torch.full_like(ids, default, dtype=torch.bool)
        if not isinstance(value, Tensor) or value.shape != ids.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a tensor of the shape of input_ids {tuple(ids.shape)}, got {shape}")
        return value.to(device=ids.device) != 0

    def _ranks(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Each position's rank ``(N, L)`` (deletable tokens first, by decreasing score), NaN rows ``(N,)``."""
        ids = self.bound.batch.tensors[0]
        scores = per_example(scores, ids.shape[0], "scores")
        if scores.shape != ids.shape:
            raise ValueError(f"scores must have the shape of input_ids {tuple(ids.shape)}, got {tuple(scores.shape)}")
        values = scores.detach().to(device=ids.device, dtype=torch.float64)
        invalid = (values.isnan() & self.deletable).any(1)
        values = torch.where(values.isnan() | ~self.deletable, float("-inf"), values)
        # Stable sorts: by score (ties in position order), then deletable positions ahead of the rest.
        order = values.sort(dim=1, descending=True, stable=True).indices
        order = order.gather(1, (~self.deletable).gather(1, order).to(torch.uint8).sort(dim=1, stable=True).indices)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(order)
        return torch.empty_like(order).scatter_(1, order, positions), invalid

    def curve(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Fractions of tokens removed ``(N, P)`` (float64) and the model's scores there ``(N, P)``.

        Sequence ``n`` with :math:`T_n` removable tokens is evaluated at
        :math:`k_{n,s} = \\lfloor s T_n / S_n \\rfloor` tokens removed,
        :math:`s = 0..S_n`, with :math:`S_n = T_n` (every token, ``steps=None``)
        or ``steps``. Shorter curves are padded to ``P = max S_n + 1`` points by
        repeating their last point (which adds nothing to the area). Rows
        whose scores hold a NaN on a removable token are NaN.
        """
        ids = self.bound.batch.tensors[0]
        device = ids.device
        ranks, invalid = self._ranks(scores)
        points = self.lengths if self.steps is None else torch.full_like(self.lengths, self.steps)
        ends = torch.cumsum(points + 1, 0)  # rows of example n: ends[n-1] .. ends[n]-1 (example-major)
        total = int(ends[-1])
        starts = ends - (points + 1)
        mask = self.bound.batch.tensors[1] if self.mask_deleted else None

        def block(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor]:
            rows = torch.arange(start, stop, device=device)
            example = torch.searchsorted(ends, rows, right=True)
            step = rows - starts[example]
            k = torch.div(step * self.lengths[example], points[example], rounding_mode="floor").unsqueeze(1)
            rank = ranks.index_select(0, example)
            # removable tokens rank 0..T_n-1: deletion removes the first k, insertion all but the first k
            removed = rank < k if not self._inserts else self.deletable.index_select(0, example) & (rank >= k)
            row_ids = torch.where(removed, self.replacement, ids.index_select(0, example))
            if mask is None:
                return (row_ids,), example
            row_mask = torch.where(removed, torch.zeros((), dtype=mask.dtype, device=device),
                                   mask.index_select(0, example))
            return (row_ids, row_mask), example

        transform = _softmax if self.score == "softmax" else None
        flat = self.bound.evaluate(total, block, transform)
        width = int(points.max()) + 1
        s = torch.arange(width, device=device).unsqueeze(0).minimum(points.unsqueeze(1))  # (N, P), padded
        index = starts.unsqueeze(1) + s
        curves = flat.index_select(0, index.flatten()).view(index.shape)
        counts = torch.div(s * self.lengths.unsqueeze(1), points.unsqueeze(1), rounding_mode="floor")
        fractions = counts.to(torch.float64) / self.lengths.unsqueeze(1).to(torch.float64)
        curves = torch.where(invalid.unsqueeze(1), float("nan"), curves)
        return fractions, curves

    def __call__(self, scores: Tensor) -> Tensor:
        """Area under the curve ``(N,)`` (trapezoid rule over the fraction of tokens, in ``[0, 1]``)."""
        fractions, curves = self.curve(scores)
        auc = torch.trapezoid(curves.to(torch.float64), fractions, dim=1)
        return auc.to(curves.dtype)


class TokenDeletion(_TokenCurve):
    r"""Deletion AUC over tokens: how fast the score drops as the highest-scored tokens go.

    The real tokens of sequence :math:`n` (``attention_mask`` on, not in
    ``special_tokens_mask``; :math:`T_n` of them) are ranked by decreasing
    score (ties in position order). At point :math:`s` the first
    :math:`k_{n,s}` are removed: their ids become ``replacement`` and, with
    ``mask_deleted=True``, their attention mask 0. Then

    .. math:: \mathrm{AUC}_n = \int_0^1 p_t\big(x^{(f)}\big)\,df \approx \sum_s
        \frac{f_s - f_{s-1}}{2}\big(p_t(x^{(s)}) + p_t(x^{(s-1)})\big), \qquad f_s = k_{n,s} / T_n,

    with :math:`p_t` the softmax probability of the target (``score="softmax"``)
    or its logit (``"logit"``). Lower is better: a faithful ranking removes
    the evidence first. By default (``steps=None``) every sequence is
    evaluated after each token, :math:`T_n + 1` points, so the curve is exact
    for texts of any length; ``steps=S`` evaluates :math:`S + 1` points each.

    The model is called as ``model(ids)`` (or ``model(ids, attention_mask)``
    with ``mask_deleted=True``), followed by ``additional_forward_args``; all
    :math:`\sum_n (S_n + 1)` perturbed sequences are evaluated ``batch_size``
    rows at a time, built on the fly, under the state guard, without
    gradients. The target is resolved on the clean sequences (None: top-1).
    Padding and special tokens are never removed and their scores are
    ignored; a NaN score on a real token makes the sequence's AUC NaN.

    Args:
        model: the classifier (for a HuggingFace model, an adapter returning logits).
        input_ids: ``(N, L)`` token ids.
        target: what is scored (see :mod:`attrib.targets`), one score per sequence.
        attention_mask: ``(N, L)`` the real tokens (default: every position).
        special_tokens_mask: ``(N, L)`` tokens never removed (``[CLS]``, ``[SEP]``).
        replacement: the id a removed token gets (``<pad>``, ``[MASK]``, ...).
        mask_deleted: also zero the attention mask of removed tokens (the mask is then passed
            to the model as its second argument).
        steps: ``None`` (a point per token) or the number of steps of every curve.
        score: ``"softmax"`` or ``"logit"``.
        batch_size: the most sequences in one forward pass (int, ``"auto"`` or None).

    Raises:
        ValueError: ids not ``(N, L)`` integers, masks of another shape, a sequence with no
            removable token, an unknown score, ``mask_deleted`` without a mask; scores not ``(N, L)``.

    Example:
        >>> from attrib.data import PAD_ID, load_model, make_sequences
        >>> model, data = load_model("text-classifier"), make_sequences(32, seed=0)
        >>> deletion = TokenDeletion(model, data.input_ids, attention_mask=data.attention_mask,
        ...                          replacement=PAD_ID)       # no mask passed: <pad> means deleted
        >>> auc = deletion(token_scores)                         # (32,), lower is better
    """

    higher_is_better = False
    _inserts = False


class TokenInsertion(_TokenCurve):
    r"""Insertion AUC over tokens: how fast the score rises as the highest-scored tokens come back.

    The mirror of :class:`TokenDeletion`: the curve starts with every real
    token removed and at point :math:`s` the first :math:`k_{n,s}` tokens in
    score order are put back. Higher is better. Options, shapes and NaN
    handling as :class:`TokenDeletion`.

    Example:
        >>> insertion = TokenInsertion(model, data.input_ids, attention_mask=data.attention_mask)
        >>> auc = insertion(token_scores)                        # (N,), higher is better
    """

    higher_is_better = True
    _inserts = True
