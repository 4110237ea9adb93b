"""Quadrature rules on [0, 1] for path integrals.

A rule with ``n`` steps gives nodes ``a_i`` and weights ``w_i`` such that
``integral_0^1 f(a) da ~= sum_i w_i f(a_i)``:

* ``riemann_left``:   ``a_i = i / n``,         ``w_i = 1 / n``
* ``riemann_right``:  ``a_i = (i + 1) / n``,   ``w_i = 1 / n``
* ``riemann_middle``: ``a_i = (i + 1/2) / n``, ``w_i = 1 / n``
* ``riemann_trapezoid``: ``a_i = i / (n - 1)``, ``w_i = 1 / (n - 1)`` halved at
  both ends (``n >= 2``). The weights sum to 1; Captum's version uses
  ``1 / n`` and so integrates to ``(n - 1) / n`` of the true value.
* ``gausslegendre``: the Gauss-Legendre nodes and weights moved from
  ``[-1, 1]`` to ``[0, 1]`` (exact for polynomials of degree ``2n - 1``).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(
    method: str, n_steps: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights ``(n_steps,)`` of ``method`` on ``[0, 1]`` (computed in float64).

    Example:
        >>> alphas, weights = quadrature("riemann_middle", 4)
        >>> alphas.tolist(), weights.tolist()
        ([0.125, 0.375, 0.625, 0.875], [0.25, 0.25, 0.25, 0.25])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        alphas, weights = (nodes + 1.0) / 2.0, weights / 2.0
    elif method == "riemann_trapezoid":
        if n < 2:
            raise ValueError(f"riemann_trapezoid needs n_steps >= 2 (both end points), got {n}")
        alphas = np.arange(n) / (n - 1)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2.0
    else:
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        alphas = (np.arange(n) + offset) / n
        weights = np.full(n, 1.0 / n)
    return (
        torch.as_tensor(alphas, dtype=dtype, device=device),
        torch.as_tensor(weights, dtype=dtype, device=device),
    )
