"""KernelSHAP: Shapley values as the constrained weighted linear fit to coalition scores (Lundberg & Lee, 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import linear_fit
from ..core.batching import BatchSize
from ..core.inputs import InputsLike
from ..core.randomness import make_generator
from ..targets import TargetLike
from .lime import CoalitionSurrogate, _positive_int

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

    Per-example masks: each example draws its coalitions over its own
    :math:`M_e` features (sizes from its own kernel); a feature it lacks gets 0.
    Draws come from ``seed``/``generator`` on the inputs' device; with a mask
    shared by the batch they are shared by the examples, so a map does not
    depend on the rest of the batch. Rows are scored ``batch_size`` at a
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
        samples = _positive_int(n_samples, "n_samples", "the number of coalitions scored, empty and full included", 2)
        problem = self._coalitions(inputs, baselines, feature_mask, batch_size, additional_forward_args)
        features, device = problem.groups.n_features, problem.batch.device
        active = problem.groups.occurs  # (1 or N, F)
        enumerated = features <= MAX_ENUMERATED and 2**features <= samples
        if enumerated:
            middle = all_coalitions(features, device)
        else:
            draw = make_generator(seed, generator, device)
            middle = shapley_coalitions(samples - 2, active, draw, bool(antithetic))
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


def all_coalitions(features: int, device: torch.device) -> Tensor:
    """``(2^F - 2, 1, F)`` bool: every coalition but the empty and the full one (bit ``j`` of ``1 .. 2^F - 2``)."""
    codes = torch.arange(1, 2**features - 1, device=device)
    return ((codes.unsqueeze(1) >> torch.arange(features, device=device)) & 1).bool().unsqueeze(1)


def shapley_coalitions(count: int, active: Tensor, generator: torch.Generator, antithetic: bool = False) -> Tensor:
    """``(count, D, F)`` bool coalitions of each row of ``active`` ``(D, F)``, drawn as KernelSHAP samples them.

    The size ``k`` is drawn with probability proportional to ``(M - 1) / (k (M - k))``,
    ``0 < k < M`` (``M`` the row's active features), then ``k`` of its features
    uniformly (the smallest ``k`` of uniform keys). A row with ``M < 2`` has no
    such coalition and gets empty ones (which :func:`shapley_kernel` weighs 0).
    With ``antithetic``, coalitions come in pairs, one and its complement.
    """
    device = torch.device(generator.device)
    rows, features = active.shape
    drawn = (count + 1) // 2 if antithetic else count
    size = torch.arange(features + 1, device=device, dtype=torch.float64)
    m = active.sum(1, keepdim=True).to(torch.float64)  # (D, 1)
    inner = (size > 0) & (size < m)
    probs = torch.where(inner, (m - 1) / (size * (m - size)).clamp_min(1), 0.0)
    probs[:, 0] = torch.where(inner.any(1), probs[:, 0], 1.0)  # M < 2: a valid (unused) distribution
    sizes = torch.multinomial(probs, max(drawn, 1), replacement=True, generator=generator)[:, :drawn]  # (D, drawn)
    keys = torch.rand(drawn, rows, features, generator=generator, device=device)
    keys = torch.where(active.unsqueeze(0), keys, 2.0)  # inactive features sort last: never chosen
    rank = keys.argsort(2).argsort(2)
    present = rank < sizes.t().unsqueeze(2)
    if antithetic:
        present = torch.stack([present, active.unsqueeze(0) & ~present], 1).reshape(-1, rows, features)[:count]
    return present


def shapley_kernel(present: Tensor, active: Tensor, enumerated: bool) -> Tensor:
    r"""``(S, D)`` float64 weights of coalitions ``present`` ``(S, D', F)`` for rows of ``active`` ``(D, F)``.

    Enumerated coalitions get the Shapley kernel :math:`\pi` of their size
    among each row's :math:`M` active features; drawn ones (already drawn
    with probability proportional to it) get 1. Either way the empty and
    full coalitions get 0 (they are the constraints).
    """
    m = active.sum(1).to(torch.float64)  # (D,)
    k = (present & active.unsqueeze(0)).sum(2).to(torch.float64)  # (S, D)
    inner = (k > 0) & (k < m)
    if not enumerated:
        return inner.to(torch.float64)
    log_choose = torch.lgamma(m + 1) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
    kernel = (m - 1) / (torch.exp(log_choose) * (k * (m - k)).clamp_min(1))
    return torch.where(inner, kernel, 0.0)
