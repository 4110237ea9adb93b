"""KernelSHAP: Shapley values as the constrained weighted linear fit to coalition scores (Lundberg & Lee, 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import linear_fit
from ..core.batching import BatchSize
from ..core.checks import positive_int
from ..core.inputs import InputsLike
from ..core.randomness import feature_major_rand, make_generator
from ..targets import TargetLike
from .lime import CoalitionSurrogate

#: The most features enumerated exactly (2^F coalitions).
MAX_ENUMERATED = 24


class KernelShap(CoalitionSurrogate):
    r"""KernelSHAP over feature groups, as Captum's ``KernelShap`` but with efficiency held exactly.

    The features of ``feature_mask`` (see :mod:`attrib.core.features`) are
    players and :math:`v(z) = S_t(x_z)` scores the row :math:`x_z` that
    takes the input on the features of the coalition :math:`z \in \{0,1\}^M`
    and the baseline elsewhere. KernelSHAP's values solve

    .. math::
        \min_\phi \sum_{0 < |z| < M} \pi(z)\,\big(v(z) - v(0) - z^\top\phi\big)^2
        \quad\text{s.t.}\quad \sum_j \phi_j = v(1) - v(0),\qquad
        \pi(z) = \frac{M - 1}{\binom{M}{|z|}\,|z|\,(M - |z|)},

    the empty and full coalitions having infinite weight (the intercept is
    :math:`v(0)` and efficiency holds). Summed over all coalitions this is
    exactly the Shapley value. Here the two infinite weights are constraints
    (:func:`~attrib.core.linear_fit.constrained_least_squares`), not Captum's
    weight of 1e6, so :math:`\sum_j \phi_j = S_t(x) - S_t(b)` to float64
    rounding for any ``n_samples``.

    ``n_samples`` counts every scored coalition, the empty and full ones
    included (as Captum). When :math:`2^M \le` ``n_samples`` every coalition
    is scored once with its weight :math:`\pi` and the result is the exact
    Shapley value. Otherwise ``n_samples - 2`` coalitions are drawn as
    Captum draws them, the size :math:`k` with probability proportional to
    :math:`(M-1)/(k(M-k))` and then :math:`k` features uniformly, and fitted
    with equal weights; ``antithetic=True`` pairs each drawn coalition with
    its complement, which lowers the variance. The fit is the minimum-norm
    solution when the draws do not determine it.

    Per-example masks: each example's features are numbered ``0 .. M_e-1``
    and it enumerates or draws its coalitions over them (sizes from its own
    kernel), deciding by its own :math:`2^{M_e} \le` ``n_samples``; a
    feature it lacks gets 0. Draws come from ``seed``/``generator`` on the
    inputs' device and are laid out so that they do not depend on the other
    examples (:func:`shapley_coalitions`): an example's map is the one it
    gets alone, in any batch. Rows are scored ``batch_size`` at a
    time; the fit keeps ``O(N M^2)`` numbers whatever ``n_samples``. Maps
    have each input's shape (``(N, K, ...)`` for an ``(N, K)`` target).

    Example:
        >>> shap = KernelShap(model)
        >>> maps = shap.attribute(images, target=labels, feature_mask=superpixels, n_samples=1000, seed=0)
        >>> exact = shap.attribute(table, target=0, n_samples=2**table.shape[1])    # every coalition: exact
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = 0,
        feature_mask: Any = None,
        n_samples: int = 25,
        antithetic: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """KernelSHAP maps of ``target`` for ``inputs``, in the form of ``inputs``."""
        samples = positive_int(
            n_samples, "n_samples", "the number of coalitions scored, empty and full included", minimum=2
        )
        problem = self._coalitions(inputs, baselines, feature_mask, batch_size, additional_forward_args)
        features, device = problem.groups.n_features, problem.batch.device
        active = problem.groups.occurs  # (1 or N, F): example e has features 0 .. M_e - 1
        draw = make_generator(seed, generator, device)
        middle, enumerated = kernel_coalitions(samples, active, draw, bool(antithetic))
        rows = max(middle.shape[1], active.shape[0])
        ends = torch.stack([torch.zeros_like(active), active]).expand(2, rows, features)  # empty, full
        present = torch.cat([ends, middle.expand(-1, rows, features)])
        scores = self._coalition_scores(problem, present, target)
        values = scores.to(torch.float64)
        y = values if values.dim() == 3 else values.unsqueeze(2)
        weights = shapley_kernel(middle, active, enumerated)
        gains = y[2:] - y[:1]  # v(z) - v(empty)
        factor = linear_fit.weighted_factor(middle, gains, weights.expand(-1, y.shape[1]), active, intercept=False)
        phi = linear_fit.constrained_least_squares(factor, problem.active, y[1] - y[0]).transpose(1, 2)
        return problem.maps(phi if values.dim() == 3 else phi[:, 0], scores.dtype)


def kernel_coalitions(
    samples: int, active: Tensor, generator: torch.Generator, antithetic: bool = False
) -> tuple[Tensor, Tensor]:
    r"""The middle coalitions ``(S, D, F)`` of rows of ``active`` ``(D, F)`` and which rows enumerate, ``(D,)`` bool.

    A row with :math:`2^M \le` ``samples`` (``M \le`` :data:`MAX_ENUMERATED`)
    lists all its :math:`2^M - 2` coalitions (:func:`all_coalitions`); the
    others draw ``samples - 2`` (:func:`shapley_coalitions`). Rows with fewer
    coalitions than ``S`` are padded with empty ones, weighed 0. The
    generator is read only if some row draws, and what a row gets depends
    only on its own ``M``, ``samples`` and the generator's state.
    """
    counts = active.sum(1).tolist()
    listing = [m <= MAX_ENUMERATED and 2**m <= samples for m in counts]
    enumerated = torch.tensor(listing, dtype=torch.bool, device=active.device)
    if all(listing):
        return all_coalitions(max(2**m for m in counts) - 2, active), enumerated
    drawn = shapley_coalitions(samples - 2, active, generator, antithetic)
    if not any(listing):
        return drawn, enumerated
    listed = all_coalitions(samples - 2, active)
    return torch.where(enumerated.view(1, -1, 1), listed, drawn), enumerated


def all_coalitions(count: int, active: Tensor) -> Tensor:
    """``(count, D, F)`` bool: row ``s`` is coalition ``s + 1`` in binary over each row of ``active``'s features.

    Bit ``i`` of the code ``s + 1`` says whether the ``i``-th active feature
    of a row (of ``M``) is present, so codes ``1 .. 2^M - 2`` are every
    coalition but the empty and the full one; codes past ``2^M - 2`` are
    empty (padding).
    """
    rows, features = active.shape
    codes = torch.arange(1, count + 1, device=active.device).view(-1, 1, 1)
    bit = (active.long().cumsum(1) - 1).clamp(0, 63)  # (D, F): the feature's place among the row's own
    last = (2 ** active.sum(1).clamp(max=MAX_ENUMERATED + 1) - 2).view(1, -1, 1)  # (1, D, 1)
    return ((codes >> bit.unsqueeze(0)) & 1).bool() & active.unsqueeze(0) & (codes <= last)


def shapley_coalitions(count: int, active: Tensor, generator: torch.Generator, antithetic: bool = False) -> Tensor:
    """``(count, D, F)`` bool coalitions of each row of ``active`` ``(D, F)``, drawn as KernelSHAP samples them.

    The size ``k`` is drawn with probability proportional to ``(M - 1) / (k (M - k))``,
    ``0 < k < M`` (``M`` the row's active features), then ``k`` of its features
    uniformly (the smallest ``k`` of uniform keys). A row with ``M < 2`` has no
    such coalition and gets empty ones (which :func:`shapley_kernel` weighs 0).
    With ``antithetic``, coalitions come in pairs, one and its complement.

    The draws are laid out so that a row's coalitions depend only on its
    own features and the generator's state, not on the other rows or on
    ``F``: one uniform per coalition picks every row's size by inverting
    that row's distribution function (:func:`size_cdf`), and one key per
    coalition and feature, drawn feature by feature
    (:func:`~attrib.core.randomness.feature_major_rand`) and shared by the
    rows, picks the features (ties broken by feature number).
    """
    rows, features = active.shape
    drawn = (count + 1) // 2 if antithetic else count
    device = torch.device(generator.device)
    u = torch.rand(drawn, generator=generator, device=device, dtype=torch.float64)
    m = active.sum(1)  # (D,)
    cdf = size_cdf(m, features)  # (D, F + 1)
    sizes = torch.searchsorted(cdf, u.expand(rows, drawn).contiguous(), right=True)  # cdf(k - 1) <= u < cdf(k)
    sizes = torch.where(m.unsqueeze(1) >= 2, sizes.clamp(max=features), 0)  # (D, drawn)
    keys = feature_major_rand(drawn, features, generator, torch.float64)  # (drawn, F)
    keys = torch.where(active.unsqueeze(0), keys.unsqueeze(1), 2.0)  # inactive features sort last: never chosen
    rank = keys.argsort(dim=2, stable=True).argsort(dim=2, stable=True)
    present = rank < sizes.t().unsqueeze(2)
    if antithetic:
        present = torch.stack([present, active.unsqueeze(0) & ~present], 1).reshape(-1, rows, features)[:count]
    return present


def size_cdf(m: Tensor, features: int) -> Tensor:
    r"""``(D, F + 1)`` float64: the distribution function of KernelSHAP's coalition size over ``M`` features.

    :math:`P(k) \propto (M-1)/(k(M-k))` for :math:`0 < k < M`, whose
    cumulative sum has the closed form (with :math:`H_n` the harmonic numbers)

    .. math:: C(k) = \frac{H_k + H_{M-1} - H_{M-1-k}}{2 H_{M-1}},\qquad 0 \le k \le M - 1,

    and 1 from :math:`k = M - 1` on. Computed element by element, so a row's
    values depend only on its own ``M``. Rows with ``M < 2`` are 1 everywhere.
    """
    k = torch.arange(features + 1, device=m.device, dtype=torch.float64)
    top = (m.to(torch.float64) - 1).clamp_min(0).unsqueeze(1)  # M - 1
    k = torch.minimum(k, top)

    def harmonic(n: Tensor) -> Tensor:
        return torch.digamma(n + 1) - torch.digamma(torch.ones_like(n))

    whole = harmonic(top)
    cdf = (harmonic(k) + whole - harmonic(top - k)) / (2 * whole).clamp_min(1e-300)
    return torch.where((k >= top) | (top < 1), 1.0, cdf)


def shapley_kernel(present: Tensor, active: Tensor, enumerated: Tensor) -> Tensor:
    r"""``(S, D)`` float64 weights of coalitions ``present`` ``(S, D', F)`` for rows of ``active`` ``(D, F)``.

    Coalitions of rows that enumerate (``enumerated`` ``(D,)`` bool) get the
    Shapley kernel :math:`\pi` of their size among the row's :math:`M`
    active features; drawn ones (already drawn with probability
    proportional to it) get 1. Either way the empty and full coalitions get
    0 (they are the constraints).
    """
    m = active.sum(1).to(torch.float64)  # (D,)
    k = (present & active.unsqueeze(0)).sum(2).to(torch.float64)  # (S, D)
    inner = (k > 0) & (k < m)
    log_choose = torch.lgamma(m + 1) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
    kernel = (m - 1) / (torch.exp(log_choose) * (k * (m - k)).clamp_min(1))
    return torch.where(inner, torch.where(enumerated, kernel, 1.0), 0.0)
