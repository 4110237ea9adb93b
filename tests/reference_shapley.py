"""Slow float64 references for the feature-group methods, written from the formulas with Python loops.

Nothing here uses attrib: a coalition is built element by element from the
mask (``torch.isin`` over the ids present), so these check attrib's
vectorised layouts independently.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Score = Callable[[tuple[Tensor, ...]], Tensor]
"""Inputs of one example (each ``(1, ...)``) -> its scalar score (a 0-d or ``(1,)`` tensor)."""


def coalition(
    x: Sequence[Tensor], baseline: Sequence[Tensor], masks: Sequence[Tensor], present: Sequence[int]
) -> tuple[Tensor, ...]:
    """One example's inputs with the features ``present`` (caller's ids) kept and the rest set to the baseline.

    ``x``, ``baseline``: one tensor ``(1, ...)`` per input; ``masks``: ids broadcastable to them.
    """
    keep = torch.tensor(sorted(present), dtype=torch.long)
    out = []
    for xi, bi, mi in zip(x, baseline, masks):
        inside = torch.isin(mi.expand_as(xi), keep) if len(keep) else torch.zeros_like(xi, dtype=torch.bool)
        out.append(torch.where(inside, xi, bi))
    return tuple(out)


def exact_shapley(value: Callable[[frozenset[int]], float], players: Sequence[int]) -> dict[int, float]:
    r"""Exact Shapley values by enumerating every coalition, in float64 (Python floats).

    .. math:: \phi_j = \sum_{S \subseteq P \setminus \{j\}} \frac{|S|!\,(|P| - |S| - 1)!}{|P|!}
              \big(v(S \cup \{j\}) - v(S)\big)
    """
    n = len(players)
    cache: dict[frozenset[int], float] = {}

    def v(s: frozenset[int]) -> float:
        if s not in cache:
            cache[s] = float(value(s))
        return cache[s]

    phi = {}
    for j in players:
        others = [p for p in players if p != j]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                total += weight * (v(frozenset(s) | {j}) - v(frozenset(s)))
        phi[j] = total
    return phi


def shapley_maps(
    score: Score, x: Sequence[Tensor], baseline: Sequence[Tensor], masks: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """Exact Shapley maps of one example: every element gets its feature's value (float64)."""
    players = sorted({int(i) for m in masks for i in m.flatten().tolist()})
    phi = exact_shapley(lambda s: float(score(coalition(x, baseline, masks, sorted(s))).detach().sum()), players)
    maps = []
    for xi, mi in zip(x, masks):
        ids = mi.expand_as(xi)
        out = torch.zeros(xi.shape, dtype=torch.float64)
        for j, value in phi.items():
            out[ids == j] = value
        maps.append(out)
    return tuple(maps)


def ablation_maps(
    score: Score, x: Sequence[Tensor], baseline: Sequence[Tensor], masks: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """Feature ablation maps of one example: ``S(x) - S(x with feature j at the baseline)`` on feature j's elements."""
    players = sorted({int(i) for m in masks for i in m.flatten().tolist()})
    clean = float(score(tuple(x)).detach().sum())
    maps = [torch.zeros(xi.shape, dtype=torch.float64) for xi in x]
    for j in players:
        rest = [p for p in players if p != j]
        drop = clean - float(score(coalition(x, baseline, masks, rest)).detach().sum())
        for out, xi, mi in zip(maps, x, masks):
            out[mi.expand_as(xi) == j] = drop
    return tuple(maps)
