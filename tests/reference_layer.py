"""Slow float64 references for the layer methods, written from each formula.

One example, one target and one integration node at a time, on a float64 copy
of the model, with plain forward hooks; none of attrib's blocks, targets or
capture machinery. ``layer`` is a dotted name; ``at_input`` reads the layer's
(one positional) input instead of its output. Inputs may be integer token ids
(they are never cast then).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .reference import as_float64, quadrature_rule


def _float64(x: Tensor) -> Tensor:
    return x.double() if x.is_floating_point() else x


def _one(x: Tensor) -> Tensor:
    return _float64(x).unsqueeze(0)


def _hook(model64: nn.Module, layer: str, at_input: bool, fn: Any) -> Any:
    """Register ``fn(value) -> value or None`` at the layer's output (or input)."""
    module = dict(model64.named_modules())[layer]
    if at_input:
        return module.register_forward_pre_hook(lambda m, args: None if (r := fn(args[0])) is None else (r,))
    return module.register_forward_hook(lambda m, args, out: fn(out))


def activation(model: nn.Module, layer: str, x: Tensor, at_input: bool = False) -> Tensor:
    """The layer's value for each example of ``x``, stacked ``(N, ...)``."""
    return _activation(as_float64(model), layer, x, at_input)


def _activation(m: nn.Module, layer: str, x: Tensor, at_input: bool) -> Tensor:
    out = []
    for i in range(x.shape[0]):
        seen: list[Tensor] = []
        handle = _hook(m, layer, at_input, lambda v, seen=seen: seen.append(v.detach().clone()))
        try:
            with torch.no_grad():
                m(_one(x[i]))
        finally:
            handle.remove()
        out.append(seen[0][0])
    return torch.stack(out)


def _gradient_at(m: nn.Module, layer: str, x: Tensor, c: int, value: Tensor | None, at_input: bool) -> Tensor:
    """dS_c/d(layer value) for one example, the layer's value replaced by ``value`` when given."""
    store: list[Tensor] = []

    def swap(v: Tensor) -> Tensor:
        leaf = (v.detach() if value is None else value.unsqueeze(0)).clone().requires_grad_(True)
        store.append(leaf)
        return leaf * 1.0  # a non-leaf copy, so in-place ops after the layer are legal

    handle = _hook(m, layer, at_input, swap)
    try:
        out = m(_one(x))
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out[0, c], store[0])
    return g[0]


def gradient_x_activation(
    model: nn.Module, layer: str, x: Tensor, targets: list[int], at_input: bool = False, multiply: bool = True
) -> Tensor:
    """A * dS/dA (or dS/dA) per example."""
    m = as_float64(model)
    acts = _activation(m, layer, x, at_input)
    out = []
    for i, t in enumerate(targets):
        g = _gradient_at(m, layer, x[i], t, None, at_input)
        out.append(acts[i] * g if multiply else g)
    return torch.stack(out)


def layer_integrated_gradients(
    model: nn.Module,
    layer: str,
    x: Tensor,
    baseline: Tensor,
    targets: list[int],
    method: str,
    n_steps: int,
    at_input: bool = False,
    multiply: bool = True,
) -> Tensor:
    """(a - a') * sum_s w_s dS/da at a' + alpha_s (a - a'), the model run on x with the layer's value replaced."""
    m = as_float64(model)
    a, b = _activation(m, layer, x, at_input), _activation(m, layer, baseline, at_input)
    alphas, weights = quadrature_rule(method, n_steps)
    out = []
    for i, t in enumerate(targets):
        total = torch.zeros_like(a[i])
        for alpha, w in zip(alphas, weights):
            total += w * _gradient_at(m, layer, x[i], t, b[i] + alpha * (a[i] - b[i]), at_input)
        out.append((a[i] - b[i]) * total if multiply else total)
    return torch.stack(out)


def layer_conductance(
    model: nn.Module,
    layer: str,
    x: Tensor,
    baseline: Tensor,
    targets: list[int],
    method: str,
    n_steps: int,
    at_input: bool = False,
) -> Tensor:
    """sum_{s<n} dS/da(x(alpha_s)) * (a(x(alpha_{s+1})) - a(x(alpha_s))) on the n + 1 nodes of ``method``."""
    m = as_float64(model)
    alphas, _ = quadrature_rule(method, n_steps + 1)
    out = []
    for i, t in enumerate(targets):
        xi, bi = x[i].double(), baseline[i].double()
        points = [bi + alpha * (xi - bi) for alpha in alphas]
        values = [_activation(m, layer, p.unsqueeze(0), at_input)[0] for p in points]
        total = torch.zeros_like(values[0])
        for s in range(n_steps):
            total += _gradient_at(m, layer, points[s], t, None, at_input) * (values[s + 1] - values[s])
        out.append(total)
    return torch.stack(out)


def scores(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    """S_t(x) per example, in float64."""
    m = as_float64(model)
    with torch.no_grad():
        return torch.stack([m(_one(x[i]))[0, t] for i, t in enumerate(targets)])
