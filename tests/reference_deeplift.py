"""Slow float64 references for DeepLift (rescale rule) and GradientShap, straight from the formulas.

They run one example at a time through an ``nn.Sequential`` layer by layer,
keep each layer's input for the example and for its reference, and carry the
multipliers back layer by layer: a linear layer passes ``J^T m``; an
element-wise layer ``f`` multiplies by ``(f(a) - f(r)) / (a - r)`` (``f'(a)``
where ``|a - r| < eps``); a max pool routes ``max(y, y') - y'`` to the input's
winner and ``y - max(y, y')`` to the reference's winner of each window and
divides by ``a - r``. None of attrib's graph walk, batching or targets is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .reference import as_float64

# Layers that are affine in their input: the multiplier is the Jacobian.
LINEAR_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Flatten,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm2d,
    nn.Identity,
    nn.Dropout,
)


class Elementwise(nn.Module):
    """``fn`` applied element-wise (a nonlinearity spelled as a function inside ``forward``)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _linear_multiplier(layer: nn.Module, a: Tensor, m: Tensor) -> Tensor:
    a = a.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(layer(a.clone()), a, grad_outputs=m)  # a copy: in-place layers may overwrite it
    return g


def _elementwise_multiplier(layer: nn.Module, a: Tensor, r: Tensor, m: Tensor, eps: float) -> Tensor:
    with torch.no_grad():
        fa, fr = layer(a.clone()), layer(r.clone())
    assert fa.shape == a.shape, f"{layer} is not element-wise"
    slope = _linear_multiplier(layer, a, torch.ones_like(a))  # f'(a), element by element
    dx = a - r
    small = dx.abs() < eps
    return m * torch.where(small, slope, (fa - fr) / torch.where(small, torch.ones_like(dx), dx))


def _maxpool_multiplier(layer: nn.MaxPool2d, a: Tensor, r: Tensor, m: Tensor, eps: float) -> Tensor:
    k = _pair(layer.kernel_size)
    s = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
    assert _pair(layer.padding) == (0, 0) and _pair(layer.dilation) == (1, 1)
    routed = torch.zeros_like(a)
    plain = torch.zeros_like(a)
    _, channels, h, w = m.shape
    for c in range(channels):
        for i in range(h):
            for j in range(w):
                rows, cols = slice(i * s[0], i * s[0] + k[0]), slice(j * s[1], j * s[1] + k[1])
                wa, wr = a[0, c, rows, cols], r[0, c, rows, cols]
                ia, ir = int(wa.flatten().argmax()), int(wr.flatten().argmax())
                pa = (c, i * s[0] + ia // k[1], j * s[1] + ia % k[1])
                pr = (c, i * s[0] + ir // k[1], j * s[1] + ir % k[1])
                ya, yr = wa.max(), wr.max()
                top = torch.maximum(ya, yr)
                g = m[0, c, i, j]
                routed[(0, *pa)] += g * (top - yr)
                routed[(0, *pr)] += g * (ya - top)
                plain[(0, *pa)] += g
    dx = a - r
    small = dx.abs() < eps
    return torch.where(small, plain, routed / torch.where(small, torch.ones_like(dx), dx))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deeplift_multipliers(
    model: nn.Sequential, x: Tensor, baseline: Tensor, targets: list[int], eps: float = 1e-10
) -> Tensor:
    """DeepLift multipliers ``(N, ...)`` in float64 of class ``targets[n]`` for ``x[n]`` against ``baseline[n]``."""
    seq = as_float64(model)
    out = []
    for n, t in enumerate(targets):
        a, r = x[n : n + 1].double(), baseline[n : n + 1].double()
        seen = []
        with torch.no_grad():
            for layer in seq:
                seen.append((layer, a, r))
                a, r = layer(a.clone()), layer(r.clone())
        m = torch.zeros_like(a)
        m[0, t] = 1.0
        for layer, a, r in reversed(seen):
            if isinstance(layer, LINEAR_LAYERS):
                m = _linear_multiplier(layer, a, m)
            elif isinstance(layer, nn.MaxPool2d):
                m = _maxpool_multiplier(layer, a, r, m, eps)
            else:
                m = _elementwise_multiplier(layer, a, r, m, eps)
        out.append(m[0])
    return torch.stack(out)


def deeplift(model: nn.Sequential, x: Tensor, baseline: Tensor, targets: list[int], eps: float = 1e-10) -> Tensor:
    """DeepLift attributions ``(x - x') * m`` in float64."""
    return (x.double() - baseline.double()) * deeplift_multipliers(model, x, baseline, targets, eps)


def deeplift_shap(model: nn.Sequential, x: Tensor, references: Tensor, targets: list[int]) -> Tensor:
    """The mean over the references of DeepLift against each, one (example, reference) pair at a time."""
    maps = []
    for n, t in enumerate(targets):
        pairs = [deeplift(model, x[n : n + 1], references[j : j + 1], [t])[0] for j in range(references.shape[0])]
        maps.append(torch.stack(pairs).mean(0))
    return torch.stack(maps)


def gradient_shap(
    model: nn.Module,
    x: Tensor,
    references: Tensor,
    targets: list[int],
    index: Tensor,
    alpha: Tensor,
    noise: Tensor,
) -> Tensor:
    """GradientShap in float64 from given draws, one drawn sample at a time.

    ``index``, ``alpha`` are ``(N, S)`` and ``noise`` ``(N, S, ...)``: sample
    ``s`` of example ``n`` uses reference ``index[n, s]``, ``alpha[n, s]`` and
    ``noise[n, s]``; the map is the mean over ``s`` of
    ``(x + noise - b) * grad S(alpha (x + noise) + (1 - alpha) b)``.
    """
    m = as_float64(model)
    maps = []
    for n, t in enumerate(targets):
        total = torch.zeros_like(x[n], dtype=torch.float64)
        for s in range(index.shape[1]):
            end = x[n].double() + noise[n, s].double()
            start = references[int(index[n, s])].double()
            a = float(alpha[n, s])
            point = (a * end + (1 - a) * start).unsqueeze(0).requires_grad_(True)
            (g,) = torch.autograd.grad(m(point)[0, t], point)
            total += (end - start) * g[0]
        maps.append(total / index.shape[1])
    return torch.stack(maps)
