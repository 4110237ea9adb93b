"""Feature groups: which input elements are switched on and off together.

Perturbation methods that explain by *features* rather than by elements
(feature ablation, permutation, Shapley value sampling, KernelSHAP, LIME)
read a ``feature_mask``: one integer tensor per input that gives every
element the id of its feature (a superpixel, a grid cell, a token span, a
column). :func:`as_feature_groups` validates it and turns it into
:class:`FeatureGroups`, which

* builds the rows of a batch of coalitions (:meth:`FeatureGroups.compose`:
  an element takes the input where its feature is present, the baseline where
  it is absent) or of single ablated features (:meth:`FeatureGroups.ablate`),
  without a Python loop over features;
* spreads per-feature values back over the elements
  (:meth:`FeatureGroups.expand`), so that every element of a group gets its
  feature's value.

Ids span all inputs together: the same id in two inputs is one feature,
switched on and off in both at once (as Captum >= 0.8 does). Ids need not be
contiguous; they are renumbered ``0 .. F-1`` in increasing order, and
``FeatureGroups.ids`` keeps the original id of each feature.

Per-example masks (first dimension ``N``) may hold different ids, and so a
different number of features, per example. ``F`` is then the number of
distinct ids over the whole batch, and ``FeatureGroups.occurs`` ``(N, F)``
says which features each example has (``counts`` how many). A feature that an
example lacks changes nothing when switched, so ablation and Shapley values
give it 0 and :meth:`expand` never places it on that example's elements.

With ``as_feature_groups(..., local=True)`` per-example ids are instead
renumbered *per example*: example ``e``'s ``F_e`` ids become ``0 .. F_e - 1``
in increasing order (over all inputs together), ``F = max_e F_e`` and
``occurs[e, j]`` is ``j < F_e``. Feature ``j`` of an example is then its own
``j``-th feature whatever the other examples hold, which is what sampling
methods need (LIME, KernelSHAP, Shapley value sampling): draws laid out
feature by feature (:func:`attrib.core.randomness.feature_major_rand`) give an
example the same coalitions in any batch as alone. ``ids`` is then
``(N, F)``: ``ids[e, j]`` the caller's id of example ``e``'s feature ``j``
(-1 past ``F_e``). A mask shared by the batch is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .inputs import InputBatch

_EXPECTED = (
    "expected None (every element its own feature), an integer tensor broadcastable to the input's shape "
    "(N, ...) (first dimension 1 or absent: shared by the batch; N: per example), or a tuple of these per input"
)


@dataclass(frozen=True)
class FeatureGroups:
    """Integer feature ids per input element, shared across the batch or per example.

    Attributes:
        masks: one long tensor per input with the input's number of dimensions,
            first dimension 1 (shared) or ``N`` (per example), the other
            dimensions 1 or the input's (broadcastable to ``(N, *shape[1:])``);
            entries are feature numbers ``0 .. n_features-1``.
        n_features: ``F``, the number of features over all inputs (and examples) together
            (with per-example numbering, the largest number any example has).
        per_example: whether some mask differs per example (first dimension ``N > 1``).
        ids: ``(F,)`` the caller's id of each feature (``ids[j]`` is feature ``j``'s id),
            or ``(N, F)`` with per-example numbering (``ids[e, j]``, -1 where example ``e`` has
            fewer than ``j + 1`` features).
        occurs: ``(1, F)`` (shared) or ``(N, F)`` (per example) bool: which
            features each example has (all True for a shared mask; ``j < F_e``
            with per-example numbering).
        shapes: each input's shape after ``N`` (the shape of its maps).
    """

    masks: tuple[Tensor, ...]
    n_features: int
    per_example: bool
    ids: Tensor
    occurs: Tensor
    shapes: tuple[tuple[int, ...], ...]

    @property
    def counts(self) -> Tensor:
        """``(1,)`` or ``(N,)``: the number of features each example has."""
        return self.occurs.sum(1)

    def _row_masks(self, mask: Tensor, example: Tensor) -> Tensor:
        """The mask of rows ``example``: ``(R, *mask.shape[1:])`` (a view when shared)."""
        if mask.shape[0] == 1:
            return mask.expand(example.shape[0], *mask.shape[1:])
        return mask.index_select(0, example)

    def compose(
        self, present: Tensor, example: Tensor, inputs: tuple[Tensor, ...], baselines: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """Rows for coalitions, one tensor ``(R, *shape[1:])`` per input.

        ``present`` ``(R, F)`` (bool, or float in [0, 1]) says which features
        are present in row ``r``, which is a copy of example ``example[r]``
        (``(R,)``). An element takes ``x`` where its feature is present and the
        baseline where it is absent; a float ``present`` mixes them,
        ``x * p + b * (1 - p)`` (exactly ``x`` at 1 and ``b`` at 0). For
        non-floating inputs (token ids) an element is present where ``present``
        is nonzero.
        """
        if present.dim() != 2 or present.shape[1] != self.n_features or present.shape[0] != example.shape[0]:
            raise ValueError(
                f"present must have shape (R, F) = ({example.shape[0]}, {self.n_features}), got {tuple(present.shape)}"
            )
        rows = []
        for x, b, mask in zip(inputs, baselines, self.masks):
            shape = (example.shape[0], *mask.shape[1:])
            if mask.shape[0] == 1:  # shared: pick columns, no (R, numel) index
                on = present.index_select(1, mask.reshape(-1)).view(shape)
            else:
                on = present.gather(1, mask.index_select(0, example).reshape(shape[0], -1)).view(shape)
            xs, bs = x.index_select(0, example), b.index_select(0, example)
            if on.dtype == torch.bool or not x.is_floating_point():
                rows.append(torch.where(on != 0, xs, bs))
            else:
                p = on.to(x.dtype)
                rows.append(xs * p + bs * (1 - p))
        return tuple(rows)

    def ablate(
        self,
        absent: Tensor,
        example: Tensor,
        inputs: tuple[Tensor, ...],
        fills: tuple[Tensor, ...],
        source: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """Rows with one feature replaced each, one tensor ``(R, *shape[1:])`` per input.

        Row ``r`` is example ``example[r]`` whose elements of feature
        ``absent[r]`` take the values of ``fills`` (each ``(N, ...)``) at
        example ``source[r]`` (``example[r]`` when ``source`` is None: the
        baseline of the same example). ``absent[r]`` outside ``0..F-1`` (e.g.
        -1) leaves the row as the example is. With ``fills=inputs`` and a
        permuted ``source`` this permutes a feature across the batch. Cheaper
        than :meth:`compose` with a one-hot ``present``: no ``(R, F)`` tensor.
        """
        take = example if source is None else source
        rows = []
        for x, fill, mask in zip(inputs, fills, self.masks):
            ids = self._row_masks(mask, example)
            off = ids == absent.view(-1, *([1] * (ids.dim() - 1)))
            rows.append(torch.where(off, fill.index_select(0, take), x.index_select(0, example)))
        return tuple(rows)

    def features_last(self, values: Tensor) -> Tensor:
        """Per-feature values ``(F, N[, K])`` -> ``(N[, K], F)``; 0 where an example lacks the feature."""
        moved = values.movedim(0, -1)
        occurs = self.occurs.view(self.occurs.shape[0], *([1] * (moved.dim() - 2)), self.n_features)
        return moved if not self.per_example else torch.where(occurs, moved, torch.zeros_like(moved))

    def expand(self, values: Tensor, *, full: bool = True) -> tuple[Tensor, ...]:
        """Per-feature values ``(N, F)`` or ``(N, K, F)`` -> one map per input, ``(N, *shape[1:])`` / ``(N, K, ...)``.

        Every element gets the value of its feature. With ``full`` (default)
        a map has its input's shape (Captum's attribution shapes, a
        contiguous tensor); with ``full=False`` the mask's broadcast shape
        (``(N, 1, H, W)`` for a mask shared by the channels), which is smaller.
        """
        if values.dim() not in (2, 3) or values.shape[-1] != self.n_features:
            raise ValueError(f"values must be (N, F) or (N, K, F) with F={self.n_features}, got {tuple(values.shape)}")
        n = values.shape[0]
        maps = []
        for mask, shape in zip(self.masks, self.shapes):
            flat = mask.expand(n, *mask.shape[1:]).reshape(n, -1)
            if values.dim() == 3:
                k = values.shape[1]
                out = values.gather(2, flat.unsqueeze(1).expand(n, k, flat.shape[1])).view(n, k, *mask.shape[1:])
            else:
                out = values.gather(1, flat).view(n, *mask.shape[1:])
            if full:
                out = out.expand(*out.shape[: out.dim() - len(shape)], *shape).contiguous()
            maps.append(out)
        return tuple(maps)


def as_feature_groups(feature_mask: object, batch: InputBatch, *, local: bool = False) -> FeatureGroups:
    """Validate ``feature_mask`` for ``batch`` and renumber its ids ``0 .. F-1``.

    With ``local`` a per-example mask is renumbered per example (each
    example's ids ``0 .. F_e - 1``; see the module docstring), so that
    feature ``j`` of an example does not depend on the rest of the batch.

    ``None`` makes every element of every input its own feature, numbered
    consecutively across the inputs (input 0's elements first, in row-major
    order). Otherwise one integer tensor per input (a bare tensor for a single
    input, a tuple/list for tuple inputs), broadcastable to the input's shape:
    ``(N, ...)`` per example, ``(1, ...)`` or without the batch dimension for
    all examples, size-1 dimensions to span them (``(1, 1, H, W)`` for one id
    per pixel over all channels).

    Raises:
        TypeError: a mask that is not a tensor or not of an integer dtype.
        ValueError: a tuple of the wrong length, a shape that does not
            broadcast, or a negative id.
    """
    inputs = batch.tensors
    device = batch.device
    if feature_mask is None:
        masks: list[Tensor] = []
        offset = 0
        for x in inputs:
            numel = x[0].numel()
            masks.append(torch.arange(offset, offset + numel, device=device).view(1, *x.shape[1:]))
            offset += numel
        occurs = torch.ones(1, offset, dtype=torch.bool, device=device)
        ids = torch.arange(offset, device=device)
        return FeatureGroups(tuple(masks), offset, False, ids, occurs, _shapes(batch))
    if isinstance(feature_mask, (tuple, list)):
        bad = [type(m).__name__ for m in feature_mask if not isinstance(m, Tensor)]
        if bad:
            raise TypeError(
                f"feature_mask must be an integer Tensor or a tuple of them per input, "
                f"got a {type(feature_mask).__name__} holding {bad[0]}; {_EXPECTED}"
            )
        if len(feature_mask) != len(inputs):
            raise ValueError(
                f"feature_mask must have one entry per input ({len(inputs)}), got {len(feature_mask)}; {_EXPECTED}"
            )
        entries = tuple(feature_mask)
    elif len(inputs) == 1:
        entries = (feature_mask,)
    else:
        raise TypeError(
            f"with {len(inputs)} inputs, feature_mask must be a tuple with one mask per input, "
            f"got {type(feature_mask).__name__}"
        )
    checked = [
        _checked_mask(m, x, "feature_mask" if len(inputs) == 1 else f"feature_mask[{i}]", device)
        for i, (m, x) in enumerate(zip(entries, inputs))
    ]
    ids, inverse = torch.unique(torch.cat([m.reshape(-1) for m in checked]), sorted=True, return_inverse=True)
    masks, start = [], 0
    for m in checked:
        masks.append(inverse[start : start + m.numel()].view(m.shape))
        start += m.numel()
    n_features = int(ids.shape[0])
    per_example = any(m.shape[0] != 1 for m in masks)
    rows = batch.n if per_example else 1
    occurs = torch.zeros(rows, n_features, dtype=torch.bool, device=device)
    for m in masks:
        flat = m.expand(rows, *m.shape[1:]).reshape(rows, -1)
        occurs.scatter_(1, flat, True)
    if local and per_example:
        return _per_example_numbering(masks, ids, occurs, _shapes(batch))
    return FeatureGroups(tuple(masks), n_features, per_example, ids, occurs, _shapes(batch))


def _per_example_numbering(
    masks: list[Tensor], ids: Tensor, occurs: Tensor, shapes: tuple[tuple[int, ...], ...]
) -> FeatureGroups:
    """Batch-wide feature numbers ``masks`` (``occurs`` ``(N, G)``) renumbered ``0 .. F_e - 1`` per example."""
    n, wide = occurs.shape
    rank = occurs.long().cumsum(1) - 1  # (N, G): an example's number of each batch-wide feature it has
    local = []
    for m in masks:
        flat = m.expand(n, *m.shape[1:]).reshape(n, -1)
        local.append(rank.gather(1, flat).view(n, *m.shape[1:]))
    counts = occurs.sum(1)
    n_features = int(counts.max())
    slot = torch.where(occurs, rank, n_features)  # absent features go to a spare column, dropped below
    own = torch.full((n, n_features + 1), -1, dtype=ids.dtype, device=ids.device)
    own.scatter_(1, slot, ids.expand(n, wide))
    present = torch.arange(n_features, device=occurs.device) < counts.unsqueeze(1)
    return FeatureGroups(tuple(local), n_features, True, own[:, :n_features], present, shapes)


def _shapes(batch: InputBatch) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(x.shape[1:]) for x in batch.tensors)


def _checked_mask(mask: object, x: Tensor, label: str, device: torch.device) -> Tensor:
    """``mask`` as a long tensor on ``device`` with ``x``'s number of dimensions, first dimension 1 or N."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{label} must be an integer Tensor, got {type(mask).__name__}; {_EXPECTED}")
    if mask.dtype == torch.bool or mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{label} must hold integer feature ids, got dtype {mask.dtype}; {_EXPECTED}")
    if mask.dim() > x.dim():
        raise ValueError(
            f"{label} of shape {tuple(mask.shape)} has more dimensions than the input's shape {tuple(x.shape)}"
        )
    full = mask.reshape(*([1] * (x.dim() - mask.dim())), *mask.shape)
    if any(m not in (1, s) for m, s in zip(full.shape, x.shape)):
        raise ValueError(
            f"{label} of shape {tuple(mask.shape)} does not broadcast to the input's shape {tuple(x.shape)}; "
            f"{_EXPECTED}"
        )
    if full.numel() == 0:
        raise ValueError(f"{label} is empty (shape {tuple(mask.shape)})")
    full = full.detach().to(device=device, dtype=torch.long)
    low = int(full.min())
    if low < 0:
        raise ValueError(f"{label} ids must be >= 0, got minimum {low}")
    return full
