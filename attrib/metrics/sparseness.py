"""Sparseness: the Gini index of a map's absolute values (Chalasani et al., 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Metric, flat_maps


def gini(values: Tensor) -> Tensor:
    r"""Gini index ``(N,)`` of the rows of non-negative ``values`` ``(N, M)``, in float64.

    With the row sorted ascending, :math:`v_{(1)} \le \dots \le v_{(M)}`:

    .. math:: G(v) = \frac{\sum_{i=1}^{M} (2i - M - 1)\, v_{(i)}}{M \sum_{i=1}^{M} v_{(i)}}

    the Gini index of Chalasani et al. (2020),
    :math:`1 - 2\sum_k \frac{v_{(k)}}{\lVert v\rVert_1}\,\frac{M - k + 1/2}{M}`, rearranged;
    0 for a constant row (and for an all-zero row, by convention), ``(M - 1) / M``
    for a one-hot row; NaN where the row holds a NaN.
    """
    v = values.to(torch.float64).sort(1).values
    m = v.shape[1]
    weights = 2 * torch.arange(1, m + 1, device=v.device, dtype=torch.float64) - m - 1
    total = v.sum(1)
    g = (v * weights).sum(1) / (m * torch.where(total > 0, total, 1))
    return torch.where(values.isnan().any(1), float("nan"), g)


class Sparseness(Metric):
    r"""Sparseness (Chalasani et al., 2020): the Gini index of :math:`|A|` per example.

    All entries of an example's maps (every input, every channel) form one
    vector :math:`v = |A|` of length :math:`M` (see :func:`gini`). The score lies in
    :math:`[0, (M-1)/M] \subset [0, 1)`: 0 for a uniform map, close to 1 for a
    map concentrated on one entry; it is invariant to scaling the map.
    Higher is sparser (``higher_is_better = True``). An all-zero map scores
    0 and a map with a NaN scores NaN. No model is involved, so nothing is
    bound: ``Sparseness()(maps)``.

    Example:
        >>> Sparseness()(maps)   # maps (N, ...) -> (N,)
    """

    higher_is_better = True

    def __call__(self, maps: Any) -> Tensor:
        """Gini index ``(N,)`` of ``|maps|`` (a tensor ``(N, ...)`` or a tuple of them), in the maps' dtype."""
        flat = flat_maps(maps).abs()
        if flat.shape[1] == 0:
            raise ValueError("maps must have at least one entry per example")
        return gini(flat).to(flat.dtype)
