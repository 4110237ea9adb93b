"""Row-wise similarity of two batches of maps: Pearson and Spearman rank correlation."""

from __future__ import annotations

import torch
from torch import Tensor


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..M-1`` of each row of ``values`` ``(N, M)``, tied values sharing their mean rank (float64).

    Example:
        >>> average_ranks(torch.tensor([[3.0, 1.0, 3.0]]))
        tensor([[1.5000, 0.0000, 1.5000]], dtype=torch.float64)
    """
    n, m = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    new_group = torch.ones_like(ordered, dtype=torch.bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = new_group.long().cumsum(1) - 1  # group number of each sorted position, per row
    flat_group = (group + torch.arange(n, device=values.device).unsqueeze(1) * m).flatten()
    positions = torch.arange(m, device=values.device, dtype=torch.float64).expand(n, m).flatten()
    sums = torch.zeros(n * m, dtype=torch.float64, device=values.device).index_add_(0, flat_group, positions)
    counts = torch.zeros(n * m, dtype=torch.float64, device=values.device).index_add_(
        0, flat_group, torch.ones_like(positions)
    )
    mean_rank = (sums / counts.clamp(min=1))[flat_group].view(n, m)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    r"""Pearson correlation ``(N,)`` of the rows of ``a`` and ``b`` ``(N, M)``, in float64.

    .. math:: r = \frac{\sum_i (a_i - \bar a)(b_i - \bar b)}{\lVert a - \bar a\rVert\,\lVert b - \bar b\rVert}

    NaN where a row is constant or holds a NaN.
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    numerator = (a * b).sum(1)
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1), float("nan"))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation ``(N,)``: Pearson's of the average ranks; NaN for constant or NaN rows."""
    invalid = a.isnan().any(1) | b.isnan().any(1)
    rho = pearson(average_ranks(a), average_ranks(b))
    return torch.where(invalid, float("nan"), rho)


SIMILARITIES = {"spearman": spearman, "pearson": pearson}
