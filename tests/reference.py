"""Slow float64 references written straight from each method's formula.

They loop over examples, targets and integration steps one at a time and use
none of attrib's batching, target or rule machinery.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .models import FunctionalReLU

Score = Callable[[Tensor], Tensor]  # model output (1, ...) -> scalar


def as_float64(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def class_score(c: int) -> Score:
    return lambda out: out[0, c] if out.dim() == 2 else out[0, c].sum()


def gradient(model64: nn.Module, x: Tensor, score: Score) -> Tensor:
    """dS/dx of one example ``x`` (no batch dim), in float64."""
    xi = x.detach().double().unsqueeze(0).requires_grad_(True)
    (g,) = torch.autograd.grad(score(model64(xi)), xi)
    return g[0]


def saliency(model: nn.Module, x: Tensor, targets: list[int], absolute: bool = True) -> Tensor:
    m = as_float64(model)
    out = torch.stack([gradient(m, x[i], class_score(t)) for i, t in enumerate(targets)])
    return out.abs() if absolute else out


def input_x_gradient(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    return x.double() * saliency(model, x, targets, absolute=False)


def quadrature_rule(method: str, n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights on [0, 1], from the textbook definitions."""
    if method == "riemann_left":
        return [i / n for i in range(n)], [1 / n] * n
    if method == "riemann_right":
        return [(i + 1) / n for i in range(n)], [1 / n] * n
    if method == "riemann_middle":
        return [(i + 0.5) / n for i in range(n)], [1 / n] * n
    if method == "riemann_trapezoid":
        h = 1 / (n - 1)
        return [i * h for i in range(n)], [h / 2] + [h] * (n - 2) + [h / 2]
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return [float((ti + 1) / 2) for ti in t], [float(wi / 2) for wi in w]
    raise ValueError(method)


def integrated_gradients(
    model: nn.Module, x: Tensor, baseline: Tensor, targets: list[int], method: str, n_steps: int
) -> Tensor:
    """(x - x') * sum_s w_s dS(x' + a_s (x - x'))/dx, one example and one step at a time."""
    m = as_float64(model)
    alphas, weights = quadrature_rule(method, n_steps)
    out = []
    for i, t in enumerate(targets):
        xi, bi = x[i].double(), baseline[i].double()
        total = torch.zeros_like(xi)
        for a, w in zip(alphas, weights):
            total += w * gradient(m, bi + a * (xi - bi), class_score(t))
        out.append((xi - bi) * total)
    return torch.stack(out)


def score_gain(model: nn.Module, x: Tensor, baseline: Tensor, targets: list[int]) -> Tensor:
    """S(x) - S(x') per example, in float64."""
    m = as_float64(model)
    with torch.no_grad():
        return torch.stack(
            [
                class_score(t)(m(x[i : i + 1].double())) - class_score(t)(m(baseline[i : i + 1].double()))
                for i, t in enumerate(targets)
            ]
        )


def _rectifier_backward(rule: str, x_in: Tensor, g: Tensor) -> Tensor:
    if rule == "guided":
        return g * (x_in > 0) * (g > 0)
    if rule == "deconv":
        return g * (g > 0)
    if rule == "plain":
        return g * (x_in > 0)
    raise ValueError(rule)


def modified_backprop(model: nn.Sequential, x: Tensor, targets: list[int], rule: str) -> Tensor:
    """Layer-by-layer backward through a Sequential: the rule at ReLUs, the exact local VJP elsewhere."""
    m = as_float64(model)
    out = []
    for i, t in enumerate(targets):
        h = x[i : i + 1].double()
        inputs = []
        with torch.no_grad():
            for layer in m:
                inputs.append(h)
                h = layer(h.clone())
        g = torch.zeros_like(h)
        g[0, t] = 1.0
        for layer, h_in in zip(reversed(list(m)), reversed(inputs)):
            if isinstance(layer, (nn.ReLU, FunctionalReLU)):
                g = _rectifier_backward(rule, h_in, g)
            else:
                probe = h_in.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(layer(probe), probe, grad_outputs=g)
        out.append(g[0])
    return torch.stack(out)


def noise_tunnel(per_sample: list[Tensor], kind: str) -> Tensor:
    """Aggregate per-sample maps [A(x + e_1), ..., A(x + e_n)] by the NoiseTunnel formulas."""
    stack = torch.stack([a.double() for a in per_sample])
    mean = stack.mean(0)
    if kind == "smoothgrad":
        return mean
    mean_sq = (stack**2).mean(0)
    if kind == "smoothgrad_sq":
        return mean_sq
    return mean_sq - mean**2
