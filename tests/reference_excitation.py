"""Slow float64 references for excitation backprop, written layer by layer from the formula.

One example at a time, every linear map as an explicit dense matrix ``A``
(built by applying the bias-free map with :math:`W^+` to the basis vectors),
and the rule of Zhang et al. (2016) applied literally:

    p'_j = sum_i  x_j A_ij p_i / (sum_k A_ik x_k + eps)

Max pooling routes each output's signal to the input its Jacobian selects
(the window's winner); ReLU keeps the signal where its input is positive;
batch norm, flatten and dropout pass it unchanged; a :class:`Residual` block
``y = body(x) + x`` splits it in proportion to the two terms. Supports
``nn.Sequential`` models of these layers (and :class:`Residual` blocks).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import FunctionalReLU

EPS = 1e-20


class Residual(nn.Module):
    """``body(x) + x``."""

    def __init__(self, *body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def _forward(layer: nn.Module, x: Tensor) -> Tensor:
    """The eval-mode forward of one layer on one example ``x`` (no batch dimension)."""
    if isinstance(layer, Residual):
        return _forward_all(list(layer.body), x)[-1] + x
    if isinstance(layer, (nn.ReLU, FunctionalReLU)):
        return torch.relu(x)
    if isinstance(layer, (nn.Dropout, nn.Identity)):
        return x
    if isinstance(layer, nn.Flatten):
        return x.reshape(-1)
    if isinstance(layer, nn.BatchNorm2d):
        assert layer.running_mean is not None and layer.running_var is not None
        shape = (-1, 1, 1)
        scale = layer.weight.double().view(shape) / torch.sqrt(layer.running_var.double().view(shape) + layer.eps)
        return (x - layer.running_mean.double().view(shape)) * scale + layer.bias.double().view(shape)
    return layer(x.unsqueeze(0)).squeeze(0)


def _forward_all(layers: list[nn.Module], x: Tensor) -> list[Tensor]:
    acts = [x]
    for layer in layers:
        acts.append(_forward(layer, acts[-1]))
    return acts


def _dense(fn, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    """The matrix ``A`` (outputs x inputs) of a linear map ``fn`` of batched inputs shaped like ``x``."""
    basis = torch.eye(x.numel(), dtype=torch.float64).reshape(x.numel(), *x.shape)
    return fn(basis).reshape(x.numel(), -1).T


def _excite(a: Tensor, x: Tensor, p: Tensor, eps: float) -> Tensor:
    """``p'_j = x_j sum_i A_ij p_i / (sum_k A_ik x_k + eps)`` on flattened vectors, reshaped like ``x``."""
    xf, pf = x.reshape(-1), p.reshape(-1)
    z = a @ xf
    out = torch.zeros_like(xf)
    for i in range(a.shape[0]):  # literally, one output unit at a time
        out += xf * a[i] * pf[i] / (z[i] + eps)
    return out.reshape(x.shape)


def _linear_matrix(layer: nn.Module, x: Tensor, negate: bool) -> Tensor | None:
    if isinstance(layer, nn.Linear):
        w = layer.weight.double()
        return (-w if negate else w).clamp(min=0)
    if isinstance(layer, nn.Conv2d):
        w = layer.weight.double()
        w = (-w if negate else w).clamp(min=0)
        return _dense(lambda b: F.conv2d(b, w, None, layer.stride, layer.padding, layer.dilation, layer.groups), x)
    if isinstance(layer, nn.AvgPool2d):
        return _dense(
            lambda b: F.avg_pool2d(
                b,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.ceil_mode,
                layer.count_include_pad,
                layer.divisor_override,
            ),
            x,
        )
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return _dense(lambda b: F.adaptive_avg_pool2d(b, layer.output_size), x)
    return None


def _back(layer: nn.Module, x: Tensor, y: Tensor, p: Tensor, negate: bool, eps: float) -> Tensor:
    """The signal at ``x`` (the layer's input) from the signal ``p`` at its output ``y``."""
    a = _linear_matrix(layer, x, negate)
    if a is not None:
        return _excite(a, x, p, eps)
    if isinstance(layer, nn.MaxPool2d):
        jac = torch.autograd.functional.jacobian(lambda t: _forward(layer, t), x).reshape(y.numel(), x.numel())
        return (jac.T @ p.reshape(-1)).reshape(x.shape)
    if isinstance(layer, (nn.ReLU, FunctionalReLU)):
        return p * (x > 0)
    if isinstance(layer, (nn.BatchNorm2d, nn.Dropout, nn.Identity, nn.Flatten)):
        return p.reshape(x.shape)
    if isinstance(layer, Residual):
        body = _forward_all(list(layer.body), x)[-1]
        total = body + x
        safe = torch.where(total == 0, torch.ones_like(total), total)
        share_body = torch.where(total == 0, torch.zeros_like(p), p * body / safe)
        share_skip = torch.where(total == 0, torch.zeros_like(p), p * x / safe)
        return _signal(list(layer.body), x, share_body, 0, None, eps) + share_skip
    raise NotImplementedError(type(layer).__name__)


def _signal(
    layers: list[nn.Module],
    x: Tensor,
    seed: Tensor,
    stop: int,
    negated: int | None,
    eps: float,
    contrast: tuple[int, Tensor] | None = None,
) -> Tensor:
    """The signal at the output of ``layers[:stop]`` for ``seed`` at the last output.

    ``negated``: index of the layer whose weights are negated. ``contrast``:
    ``(index, dual)`` subtracts ``dual`` from the signal at the output of ``layers[:index]``.
    """
    acts = _forward_all(layers, x)
    p = seed
    for i in reversed(range(stop, len(layers))):
        if contrast is not None and i + 1 == contrast[0]:
            p = p - contrast[1]
        p = _back(layers[i], acts[i], acts[i + 1], p, negated == i, eps)
    if contrast is not None and stop == contrast[0]:
        p = p - contrast[1]
    return p


def _seed(model: nn.Sequential, x: Tensor, target: int) -> Tensor:
    out = _forward_all(list(model), x)[-1]
    seed = torch.zeros_like(out)
    seed[target] = 1.0
    return seed


def excitation_backprop(model: nn.Sequential, x: Tensor, targets: list[int], layer: int, eps: float = EPS) -> Tensor:
    """Maps ``(N, 1, h, w)``: channel sums of the signal at the output of ``model[:layer]``."""
    model = copy.deepcopy(model).double()
    layers = list(model)
    maps = []
    for xi, t in zip(x.double(), targets):
        maps.append(_signal(layers, xi, _seed(model, xi, t), layer, None, eps).sum(0, keepdim=True))
    return torch.stack(maps).detach()


def contrastive_excitation_backprop(
    model: nn.Sequential, x: Tensor, targets: list[int], layer: int, contrast: int, classifier: int, eps: float = EPS
) -> Tensor:
    """Maps ``(N, 1, h, w)``: clamp of the channel sum of EB(target) minus the dual, subtracted at ``contrast``."""
    model = copy.deepcopy(model).double()
    layers = list(model)
    maps = []
    for xi, t in zip(x.double(), targets):
        seed = _seed(model, xi, t)
        dual = _signal(layers, xi, seed, contrast, classifier, eps)
        p = _signal(layers, xi, seed, layer, None, eps, contrast=(contrast, dual))
        maps.append(p.sum(0, keepdim=True).clamp(min=0))
    return torch.stack(maps).detach()
