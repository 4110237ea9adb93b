r"""A slow float64 reference of LRP, written from the rules' formulas with dense matrices.

Every layer of a small model is turned, one example at a time, into its
dense matrix :math:`M` (``out x in``, probed with basis vectors) and bias
:math:`b`, so that :math:`z = M x + b`; the rules are then the formulas of
the papers over the matrix entries :math:`w_{ij} = M_{ji}`:

* epsilon: :math:`R_i = \sum_j x_i w_{ij} R_j / \mathrm{stab}(z_j)`;
* z+ / alpha-beta / gamma: the same with the positive and negative parts of
  the entries and of the inputs (see :mod:`attrib.lrp.rules`);
* flat: :math:`w_{ij} = 1` on the connections, inputs 1; w²: :math:`w_{ij}^2`, inputs 1;
* z-box: :math:`x_i w_{ij} - l_i w^+_{ij} - h_i w^-_{ij}`;
* average pooling: the epsilon formula with the pooling matrix and the
  composite's stabilizer; max pooling: each output's relevance to its window's winner;
* BatchNorm after a layer: folded into its rows, :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`,
  :math:`M' = \mathrm{diag}(s) M`, :math:`b' = s (b - \mu) + \beta`;
* :class:`Residual` ``y = body(x) + x``: :math:`R_{body} = \mathrm{body}(x)\, R / \mathrm{stab}(y)`,
  :math:`R_{skip} = x\, R / \mathrm{stab}(y)`.

Models are ``nn.Sequential`` stacks of those layers (ReLU, Flatten, Dropout
and Identity pass relevance on). The output relevance is the target's score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrib.lrp import AlphaBeta, Epsilon, Flat, Gamma, LayerRule, WSquare, ZBox

_PASS = (nn.ReLU, nn.Flatten, nn.Dropout, nn.Identity)


class Residual(nn.Module):
    """``body(x) + x``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _dense(fn: Callable[[Tensor], Tensor], shape: tuple[int, ...]) -> Tensor:
    """The matrix ``(out, in)`` of a linear map acting on one example of ``shape``."""
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return fn(basis).reshape(n, -1).T.clone()


def _layer_matrix(layer: nn.Module, shape: tuple[int, ...], weight: Tensor | None = None) -> Tensor:
    w = layer.weight.detach().double() if weight is None else weight
    if isinstance(layer, nn.Linear):
        return _dense(lambda e: e @ w.T, shape)
    assert isinstance(layer, nn.Conv2d)
    return _dense(
        lambda e: F.conv2d(e, w, None, layer.stride, layer.padding, layer.dilation, layer.groups),  # type: ignore[arg-type]
        shape,
    )


def _affine(layer: nn.Module, norm: nn.Module | None, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense ``M``, bias ``b`` (per output entry) and the support mask of a (folded) layer at ``x``."""
    shape = tuple(x.shape)
    m = _layer_matrix(layer, shape)
    out = _layer_matrix(layer, shape, torch.ones_like(layer.weight, dtype=torch.float64)) != 0
    positions = m.shape[0] // layer.weight.shape[0]  # output entries per channel
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(layer.weight.shape[0]).double()
    b = bias.repeat_interleave(positions)
    if norm is not None:
        s = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        shift = norm.bias.detach().double() - norm.running_mean.double() * s
        s_full, shift_full = s.repeat_interleave(positions), shift.repeat_interleave(positions)
        m = m * s_full[:, None]
        b = b * s_full + shift_full
    return m, b, out


def _rule_relevance(
    rule: LayerRule, m: Tensor, b: Tensor, support: Tensor, x: Tensor, r: Tensor, shape: tuple[int, ...]
) -> Tensor:
    """``R_i`` for one layer from the rule's formula (``x`` and ``r`` flat vectors; ``shape``: one example's)."""
    if rule.zero_bias:
        b = torch.zeros_like(b)
    pos, neg = m.clamp(min=0), m.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    bp, bn = b.clamp(min=0), b.clamp(max=0)
    if isinstance(rule, Epsilon):
        z = m @ x + b
        return x * (m.T @ (r / stab(z, rule.epsilon)))
    if isinstance(rule, AlphaBeta):
        zp = pos @ xp + neg @ xn + bp
        zn = neg @ xp + pos @ xn + bn
        sp, sn = r / stab(zp, rule.stabilizer), r / stab(zn, rule.stabilizer)
        plus = xp * (pos.T @ sp) + xn * (neg.T @ sp)
        minus = xp * (neg.T @ sn) + xn * (pos.T @ sn)
        return rule.alpha * plus - rule.beta * minus
    if isinstance(rule, Gamma):
        g = rule.gamma
        mp, mn = m + g * pos, m + g * neg
        z = m @ x + b
        zp = mp @ xp + mn @ xn + b + g * bp
        zn = mn @ xp + mp @ xn + b + g * bn
        sp = (z > 0).double() * r / stab(zp, rule.stabilizer)
        sn = (z < 0).double() * r / stab(zn, rule.stabilizer)
        return xp * (mp.T @ sp + mn.T @ sn) + xn * (mn.T @ sp + mp.T @ sn)
    if isinstance(rule, Flat):
        ones = support.double()
        return ones.T @ (r / stab(ones.sum(1), rule.stabilizer))
    if isinstance(rule, WSquare):
        sq = m * m
        return sq.T @ (r / stab(sq.sum(1), rule.stabilizer))
    if isinstance(rule, ZBox):
        low = torch.as_tensor(rule.low, dtype=torch.float64).expand(1, *shape).flatten()
        high = torch.as_tensor(rule.high, dtype=torch.float64).expand(1, *shape).flatten()
        z = m @ x - pos @ low - neg @ high
        s = r / stab(z, rule.stabilizer)
        return x * (m.T @ s) - low * (pos.T @ s) - high * (neg.T @ s)
    raise AssertionError(f"no reference for {rule!r}")


def _backward(
    layers: list[nn.Module], x: Tensor, r_out: Tensor | None, rules: dict[nn.Module, LayerRule], eps: float
) -> tuple[Tensor, Tensor]:
    """The output of ``layers`` at ``x`` (one example, no batch dim) and, given its relevance, the input's."""
    # Forward, noting each step's input and the BatchNorm folded into it.
    steps: list[tuple[nn.Module, nn.Module | None, Tensor]] = []
    i, h = 0, x
    while i < len(layers):
        layer = layers[i]
        norm = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and norm is not None:
            steps.append((layer, norm, h))
            h = norm(layer(h[None]))[0].detach()
            i += 2
            continue
        steps.append((layer, None, h))
        h = _forward(layer, h)
        i += 1
    if r_out is None:
        return h, torch.empty(0)
    r = r_out
    for layer, norm, h_in in reversed(steps):
        r = _step_back(layer, norm, h_in, r, rules, eps)
    return h, r


def _forward(layer: nn.Module, h: Tensor) -> Tensor:
    if isinstance(layer, Residual):
        return _backward(list(layer.body), h, None, {}, 0.0)[0] + h
    return layer(h[None])[0].detach()


def _step_back(
    layer: nn.Module, norm: nn.Module | None, h: Tensor, r: Tensor, rules: dict[nn.Module, LayerRule], eps: float
) -> Tensor:
    if isinstance(layer, _PASS) or isinstance(layer, nn.BatchNorm2d):
        return r.reshape(h.shape)
    if isinstance(layer, Residual):
        body, _ = _backward(list(layer.body), h, None, {}, 0.0)
        s = r / stab(body + h, eps)
        _, r_body = _backward(list(layer.body), h, body * s, rules, eps)
        return r_body + h * s
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        m, b, support = _affine(layer, norm, h)
        relevance = _rule_relevance(rules[layer], m, b, support, h.flatten(), r.flatten(), tuple(h.shape))
        return relevance.reshape(h.shape)
    if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        p = _dense(lambda e: layer(e), tuple(h.shape))
        flat = h.flatten()
        return (flat * (p.T @ (r.flatten() / stab(p @ flat, eps)))).reshape(h.shape)
    if isinstance(layer, nn.MaxPool2d):
        _, index = F.max_pool2d(h[None], layer.kernel_size, layer.stride, layer.padding, return_indices=True)
        out = torch.zeros(h.shape[0], h.shape[1] * h.shape[2], dtype=torch.float64)
        out.scatter_add_(1, index[0].flatten(1), r.reshape(h.shape[0], -1))
        return out.view(h.shape)
    raise AssertionError(f"no reference for {type(layer).__name__}")


def lrp(
    model: nn.Sequential, x: Tensor, target: Tensor, rules: dict[nn.Module, LayerRule], stabilizer: float
) -> Tensor:
    """Reference relevance ``(N, ...)`` of ``x`` for class ``target[n]``, in float64."""
    model = model.double().eval()
    maps = []
    for n in range(x.shape[0]):
        h = x[n].double()
        out, _ = _backward(list(model), h, None, rules, stabilizer)
        r_out = torch.zeros_like(out)
        r_out[target[n]] = out[target[n]]
        _, r = _backward(list(model), h, r_out, rules, stabilizer)
        maps.append(r)
    return torch.stack(maps)
