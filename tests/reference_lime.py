"""Slow float64 references for LIME and KernelSHAP, written from the formulas with Python loops and numpy.

Nothing here uses attrib: rows are built element by element from the mask
(:func:`reference_shapley.coalition`), similarities from the flattened rows,
and the fits by numpy least squares, a KKT system, or cyclic coordinate
descent for the lasso, so these check attrib's moment-based batched fits
independently.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .reference_shapley import Score, coalition


def players_of(masks: Sequence[Tensor]) -> list[int]:
    return sorted({int(i) for m in masks for i in m.flatten().tolist()})


def similarity(x: Sequence[Tensor], row: Sequence[Tensor], kernel_width: float, distance: str) -> float:
    """Captum's exponential kernel of the cosine or Euclidean distance between the flattened input and row."""
    a = torch.cat([t.flatten() for t in x]).double()
    b = torch.cat([t.flatten() for t in row]).double()
    return vector_similarity(a, b, kernel_width, distance)


def vector_similarity(a: Tensor, b: Tensor, kernel_width: float, distance: str) -> float:
    """``exp(-d(a, b)^2 / (2 width^2))`` with ``d`` the cosine (norms clamped at 1e-8) or Euclidean distance."""
    if distance == "cosine":
        d = 1 - float(a @ b) / (max(float(a.norm()), 1e-8) * max(float(b.norm()), 1e-8))
    else:
        d = float((a - b).norm())
    return math.exp(-(d**2) / (2 * kernel_width**2))


def weighted_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray, model: str, alpha: float) -> np.ndarray:
    """Coefficients (F,) of scikit-learn's LinearRegression / Ridge / Lasso objectives with an intercept."""
    total = w.sum()
    zc = z - (w @ z) / total
    yc = y - (w @ y) / total
    if model == "linear":
        root = np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(zc * root, yc * root[:, 0], rcond=None)
        return coef
    gram = zc.T @ (w[:, None] * zc)
    cross = zc.T @ (w * yc)
    if model == "ridge":
        return np.linalg.solve(gram + alpha * np.eye(z.shape[1]), cross)
    # lasso: 1/(2W) sum w r^2 + alpha |b|_1 by cyclic coordinate descent on the Gram matrix
    q, c = gram / total, cross / total
    beta = np.zeros(z.shape[1])
    for _ in range(20000):
        change = 0.0
        for j in range(z.shape[1]):
            if q[j, j] <= 0:
                continue
            rho = c[j] - q[j] @ beta + q[j, j] * beta[j]
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / q[j, j]
            change = max(change, abs(new - beta[j]))
            beta[j] = new
        if change < 1e-15:
            break
    return beta


def lime_reference(
    score: Score,
    x: Sequence[Tensor],
    baseline: Sequence[Tensor],
    masks: Sequence[Tensor],
    present: Tensor,
    *,
    model: str = "lasso",
    alpha: float = 0.01,
    kernel_width: float = 1.0,
    distance: str = "cosine",
    presence: bool = False,
) -> dict[int, float]:
    """One example's LIME coefficients by caller's id, for coalitions ``present`` (S, M) over its ids in order.

    Column ``j`` of ``present`` is the example's ``j``-th id over all inputs'
    masks in increasing order. With ``presence`` (token ids) the kernel's
    distance is between the all-ones vector and the coalition ``z`` (LIME's
    text explainer), not between the input and the row.
    """
    ids = players_of(masks)
    z, y, w = [], [], []
    for row in present.tolist():
        on = [p for p, keep in zip(ids, row) if keep]
        rows = coalition(x, baseline, masks, on)
        z.append([1.0 if keep else 0.0 for keep in row])
        y.append(float(score(rows).detach().sum()))
        if presence:
            ones = torch.ones(len(ids), dtype=torch.float64)
            w.append(vector_similarity(ones, torch.tensor(z[-1], dtype=torch.float64), kernel_width, distance))
        else:
            w.append(similarity(x, rows, kernel_width, distance))
    coef = weighted_fit(np.array(z), np.array(y), np.array(w), model, alpha)
    return dict(zip(ids, coef.tolist()))


def kernel_shap_reference(
    score: Score, x: Sequence[Tensor], baseline: Sequence[Tensor], masks: Sequence[Tensor], present: Tensor | None
) -> dict[int, float]:
    """One example's KernelSHAP values by caller's id from the KKT system of the constrained fit.

    ``present`` (S, M) lists the middle coalitions over the example's own ids
    (weight 1 each); None enumerates every coalition with the Shapley kernel.
    """
    ids = players_of(masks)
    m = len(ids)

    def v(row: Sequence[int]) -> float:
        return float(score(coalition(x, baseline, masks, [p for p, keep in zip(ids, row) if keep])).detach().sum())

    empty, full = v([0] * m), v([1] * m)
    if present is None:
        rows = [r for r in itertools.product([0, 1], repeat=m) if 0 < sum(r) < m]
        weights = [(m - 1) / (math.comb(m, sum(r)) * sum(r) * (m - sum(r))) for r in rows]
    else:
        rows = [tuple(int(b) for b in r) for r in present.tolist() if 0 < sum(r) < m]
        weights = [1.0] * len(rows)
    z = np.array(rows, dtype=np.float64).reshape(-1, m)
    w = np.array(weights)
    y = np.array([v(r) for r in rows]) - empty
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = z.T @ (w[:, None] * z)
    kkt[:m, m] = kkt[m, :m] = 1.0
    rhs = np.concatenate([z.T @ (w * y), [full - empty]])
    solution, *_ = np.linalg.lstsq(kkt, rhs, rcond=None)
    return dict(zip(ids, solution[:m].tolist()))


def spread(values: dict[int, float], x: Sequence[Tensor], masks: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Per-id values placed on every element of their group, one float64 map per input."""
    maps = []
    for xi, mi in zip(x, masks):
        ids = mi.expand_as(xi)
        out = torch.zeros(xi.shape, dtype=torch.float64)
        for j, value in values.items():
            out[ids == j] = value
        maps.append(out)
    return tuple(maps)
