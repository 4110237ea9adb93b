r"""Batched weighted linear fits, solved in torch: the surrogate models of LIME and KernelSHAP.

A surrogate method fits, for each of ``B`` problems (one per example), a
linear model :math:`y_s \approx \beta_0 + z_s^\top \beta` to ``S`` samples
:math:`(z_s, y_s)` with weights :math:`w_s`, for ``K`` responses (targets)
sharing the design. :func:`weighted_factor` reads the samples a block at a
time into the triangular factor :math:`R` of the QR decomposition of the
weighted data :math:`\sqrt{w}\,[1 \mid Z \mid Y]` (a streaming, "tall-skinny"
QR), so memory is ``O(B (F + K)^2)`` whatever ``S``, and the fits never form
:math:`Z^\top W Z`, whose condition number is the square of the data's: the
solutions stay accurate when the weights span many orders of magnitude (a
narrow similarity kernel). All ``B x K`` problems are solved at once, in
float64, on the samples' device.

With an intercept the leading column :math:`\sqrt{w}` is eliminated first,
which leaves exactly the factor of the design and responses centred by their
weighted means, so the intercept is not penalised (scikit-learn's
``fit_intercept=True``). With :math:`R_{zz}, R_{zy}` the blocks of that
factor and :math:`W = \sum_s w_s`, the fits are scikit-learn's:

* :func:`least_squares` (``LinearRegression``):
  :math:`\min \sum_s w_s (\tilde y_s - \tilde z_s^\top\beta)^2`, the
  minimum-norm solution :math:`\beta = R_{zz}^+ R_{zy}` when the design is
  rank-deficient (singular values below :data:`RCOND` of the largest count as 0);
* :func:`ridge` (``Ridge``): :math:`\min \sum_s w_s (\tilde y_s - \tilde z_s^\top\beta)^2 + \alpha \|\beta\|_2^2`;
* :func:`lasso` (``Lasso``, whose weights are rescaled to sum to ``S``):
  :math:`\min \frac{1}{2W} \sum_s w_s (\tilde y_s - \tilde z_s^\top\beta)^2 + \alpha \|\beta\|_1`,
  by FISTA with adaptive restart until the duality gap is below ``tol``
  times :math:`\frac{1}{2W}\sum_s w_s \tilde y_s^2`;
* :func:`constrained_least_squares` (KernelSHAP; factor without intercept):
  :math:`\min \sum_s w_s (y_s - z_s^\top\phi)^2` subject to
  :math:`\sum_j a_j \phi_j = \Delta` and :math:`\phi_j = 0` where :math:`a_j = 0`.

A regressor that is zero in every sample (a feature an example lacks) gets
the coefficient 0 exactly in every fit.

Example:
    >>> factor = weighted_factor(coalitions, scores, weights)      # (S, 1, F) bool, (S, B, K), (S, B)
    >>> coef = lasso(factor, 0.01)                                 # (B, F, K)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Singular values below this fraction of the largest count as zero (the rank of a deficient design).
RCOND = 1e-12

#: Design entries formed per block by :func:`weighted_factor` (``rows x B x (F + K + 1)``).
BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Factor:
    r"""The triangular factor of ``B`` weighted least-squares problems, float64.

    Attributes:
        zz: ``(B, F, F)`` :math:`R_{zz}`, upper triangular, with
            :math:`R_{zz}^\top R_{zz} = \tilde Z^\top W \tilde Z` (centred if
            the factor was built with an intercept).
        zy: ``(B, F, K)`` :math:`R_{zy}`, with :math:`R_{zz}^\top R_{zy} = \tilde Z^\top W \tilde Y`.
        yy: ``(B, K)`` :math:`\tilde y^\top W \tilde y` per response.
        total: ``(B,)`` :math:`W = \sum_s w_s`.
        scale: ``(B,)`` the largest weighted norm of a regressor before centring: singular values
            below :data:`RCOND` times it are rounding (a column that centring made zero).
    """

    zz: Tensor
    zy: Tensor
    yy: Tensor
    total: Tensor
    scale: Tensor

    def dead(self) -> Tensor:
        """``(B, F)`` bool: regressors zero in every sample (their column of :math:`R_{zz}` is exactly zero)."""
        return (self.zz == 0).all(1)


def weighted_factor(
    design: Tensor, y: Tensor, weights: Tensor, columns: Tensor | None = None, *, intercept: bool = True
) -> Factor:
    """The :class:`Factor` of ``S`` weighted samples, accumulated a block of samples at a time.

    Args:
        design: ``(S, D, F)`` bool or float regressors, ``D`` 1 (shared by the
            ``B`` problems) or ``B``.
        y: ``(S, B, K)`` responses.
        weights: ``(S, B)`` non-negative sample weights.
        columns: optional ``(1 or B, F)`` bool: the regressors each problem
            has; the others are zero in all its samples.
        intercept: fit an (unpenalised) intercept, i.e. centre by the weighted means.

    Each block stacks the running factor on at most about
    :data:`BLOCK_ELEMENTS` new weighted rows and re-triangularises them.
    """
    s, d, f = design.shape
    b, k = y.shape[1], y.shape[2]
    if y.shape[0] != s or weights.shape != (s, b) or d not in (1, b):
        raise ValueError(
            f"design (S, 1 or B, F), y (S, B, K) and weights (S, B) disagree: "
            f"{tuple(design.shape)}, {tuple(y.shape)}, {tuple(weights.shape)}"
        )
    f64, device = torch.float64, design.device
    lead = 1 if intercept else 0
    width = lead + f + k
    factor = torch.zeros(b, width, width, dtype=f64, device=device)
    on = None if columns is None else columns.to(f64).expand(b, f)
    step = max(1, BLOCK_ELEMENTS // max(1, b * width))
    for start in range(0, s, step):
        root = weights[start : start + step].to(f64).clamp_min(0).sqrt().t().unsqueeze(2)  # (B, c, 1)
        x = design[start : start + step].to(f64).transpose(0, 1).expand(b, -1, f)  # (B, c, F)
        if on is not None:
            x = x * on.unsqueeze(1)
        parts = [torch.ones_like(root)] if intercept else []
        rows = torch.cat([*parts, x, y[start : start + step].to(f64).transpose(0, 1)], 2) * root
        factor = torch.linalg.qr(torch.cat([factor, rows], 1), mode="r")[1][:, :width]
    zz = factor[:, lead : lead + f, lead : lead + f]
    zy = factor[:, lead : lead + f, lead + f :]
    yy = zy.square().sum(1) + factor[:, lead + f :, lead + f :].square().sum(1)
    scale = factor[:, : lead + f, lead : lead + f].square().sum(1).amax(1).sqrt()
    return Factor(zz, zy, yy, weights.to(f64).sum(0), scale)


def _svd(matrix: Tensor, rcond: float, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``U, s, Vh`` of ``matrix`` and the mask of singular values above ``rcond`` times the largest (or ``scale``)."""
    u, sv, vh = torch.linalg.svd(matrix)
    top = torch.maximum(sv[..., :1], scale.view(-1, 1)).clamp_min(torch.finfo(sv.dtype).tiny)
    return u, sv, vh, sv > rcond * top


def _zero_dead(factor: Factor, coef: Tensor) -> Tensor:
    return torch.where(factor.dead().unsqueeze(-1), 0.0, coef)


def least_squares(factor: Factor, *, rcond: float = RCOND) -> Tensor:
    """``(B, F, K)`` weighted least-squares coefficients, minimum-norm if the design is rank-deficient."""
    u, sv, vh, keep = _svd(factor.zz, rcond, factor.scale)
    inverse = torch.where(keep, 1 / sv.clamp_min(torch.finfo(sv.dtype).tiny), 0)
    return _zero_dead(factor, vh.mT @ (inverse.unsqueeze(-1) * (u.mT @ factor.zy)))


def ridge(factor: Factor, alpha: float) -> Tensor:
    """``(B, F, K)`` ridge coefficients: ``sum_s w_s r_s^2 + alpha ||beta||^2`` (scikit-learn's ``Ridge``)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for ridge, got {alpha!r}")
    u, sv, vh, _ = _svd(factor.zz, 0.0, factor.scale)
    shrink = sv / (sv * sv + alpha)
    return _zero_dead(factor, vh.mT @ (shrink.unsqueeze(-1) * (u.mT @ factor.zy)))


def lasso(factor: Factor, alpha: float, *, tol: float = 1e-12, max_iter: int = 20000, check_every: int = 50) -> Tensor:
    r"""``(B, F, K)`` lasso coefficients: ``1/(2W) sum_s w_s r_s^2 + alpha ||beta||_1`` (scikit-learn's ``Lasso``).

    FISTA on :math:`Q = R_{zz}^\top R_{zz} / W`, :math:`q = R_{zz}^\top
    R_{zy} / W` with step :math:`1/\lambda_{\max}(Q)` and gradient-based
    adaptive restart, all ``B x K`` problems at once; every ``check_every``
    iterations (one host synchronisation) it stops once every problem's
    duality gap is at most ``tol`` times its null model's loss. ``max_iter``
    bounds the iterations.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for lasso, got {alpha!r}")
    tiny = torch.finfo(factor.zz.dtype).tiny
    total = factor.total.clamp_min(tiny).view(-1, 1, 1)
    gram = factor.zz.mT @ factor.zz / total
    q = factor.zz.mT @ factor.zy / total
    v = factor.yy / total.view(-1, 1)
    top = torch.linalg.matrix_norm(factor.zz, ord=2).square() / total.view(-1)
    step = torch.where(top > 0, 1 / top.clamp_min(tiny), 0).view(-1, 1, 1)
    threshold = alpha * step
    coef = torch.zeros_like(q)
    ahead = coef
    momentum = torch.ones_like(step)
    for iteration in range(1, max_iter + 1):
        moved = ahead - step * (gram @ ahead - q)
        new = moved.sign() * (moved.abs() - threshold).clamp_min(0)
        restart = ((ahead - new) * (new - coef)).sum(1, keepdim=True) > 0  # (B, 1, K): momentum points uphill
        following = (1 + torch.sqrt(1 + 4 * momentum * momentum)) / 2
        beta = torch.where(restart, 0.0, (momentum - 1) / following)
        momentum = torch.where(restart, 1.0, following)
        ahead = new + beta * (new - coef)
        coef = new
        if iteration % check_every == 0 and bool((lasso_gap(gram, q, v, coef, alpha) <= tol * 0.5 * v).all()):
            break
    return coef


def lasso_gap(gram: Tensor, q: Tensor, v: Tensor, coef: Tensor, alpha: float) -> Tensor:
    """``(B, K)`` duality gap of ``1/2 b'Qb - b'q + v/2 + alpha |b|_1`` at ``coef`` (scikit-learn's dual point)."""
    fitted = (coef * q).sum(1)  # beta^T q
    loss = (v - 2 * fitted + (coef * (gram @ coef)).sum(1)).clamp_min(0)  # ||r||^2 / W
    correlation = (q - gram @ coef).abs().amax(1)  # ||X^T r||_inf / W
    scale = torch.where(correlation > alpha, alpha / correlation.clamp_min(torch.finfo(q.dtype).tiny), 1.0)
    primal = 0.5 * loss + alpha * coef.abs().sum(1)
    dual = scale * (v - fitted) - 0.5 * scale * scale * loss
    return primal - dual


def constrained_least_squares(factor: Factor, active: Tensor, gain: Tensor, *, rcond: float = RCOND) -> Tensor:
    r"""``(B, F, K)``: :math:`\min \sum_s w_s (y_s - z_s^\top\phi)^2` s.t. :math:`a^\top\phi = \Delta, \phi_{a=0} = 0`.

    ``factor`` is built without intercept; ``active`` ``(B, F)`` bool is
    :math:`a`, ``gain`` ``(B, K)`` is :math:`\Delta`. With :math:`P` the
    projector onto :math:`\{\phi : a^\top\phi = 0,\ \phi_{a=0} = 0\}` and
    :math:`\phi_0 = a \Delta / |a|`, the solution is
    :math:`\phi = \phi_0 + P (R_{zz} P)^+ (R_{zy} - R_{zz}\phi_0)`: the
    minimum-norm correction when the samples do not determine it. The
    constraint holds to rounding whatever the samples.
    """
    a = active.to(factor.zz.dtype)
    count = a.sum(1).clamp_min(1).view(-1, 1, 1)
    start = a.unsqueeze(2) * gain.to(a.dtype).unsqueeze(1) / count  # (B, F, K)
    projector = torch.diag_embed(a) - a.unsqueeze(2) * a.unsqueeze(1) / count
    u, sv, vh, keep = _svd(factor.zz @ projector, rcond, factor.scale)
    inverse = torch.where(keep, 1 / sv.clamp_min(torch.finfo(sv.dtype).tiny), 0)
    correction = vh.mT @ (inverse.unsqueeze(-1) * (u.mT @ (factor.zy - factor.zz @ start)))
    return start + projector @ correction
