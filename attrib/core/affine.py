r"""A linear or convolution layer as LRP rules see it: :math:`y = f(x; W, b)` and its transpose.

An :class:`Affine` holds the weight and bias a layer computes with (read
from its module, BatchNorm folded in where one follows it) and the layer's
geometry (read from its autograd node), and evaluates the layer with any
other weight, bias and input: :math:`f(x'; W', b')` (:meth:`Affine.forward`)
and the transpose :math:`f^{*}(W', g)` (:meth:`Affine.transpose`, the
gradient of :math:`f(x; W', 0)` w.r.t. :math:`x`, which is linear in
:math:`g`). Rules build new tensors (:math:`W^+`, :math:`W^2`, ...); the
module's parameters are only read.

Folding an eval-mode BatchNorm
:math:`\mathrm{BN}(y) = \gamma (y - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`
into the layer before it gives, with :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`,

.. math:: W' = s \odot_{\text{out}} W, \qquad b' = s \odot (b - \mu) + \beta

so that :math:`f(x; W', b') = \mathrm{BN}(f(x; W, b))` (:meth:`Affine.folded`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Geometry = tuple[list[int], list[int], list[int], bool, list[int], int]
"""``(stride, padding, dilation, transposed, output_padding, groups)`` of ``torch.convolution``."""


@dataclass(frozen=True)
class Affine:
    """One call of a linear (``geometry`` None) or convolution layer, with the weight and bias it uses.

    Attributes:
        weight: ``(out, in)`` for a linear layer; the module's layout for a
            convolution (``(out, in/groups, *k)``, transposed ``(in, out/groups, *k)``).
        bias: ``(out,)`` or None.
        geometry: the convolution's :data:`Geometry`, None for a linear layer.
        nonnegative_input: the input is known to be non-negative (it comes
            from a ReLU): rules may skip the terms of :math:`x^-`, which are 0.
    """

    weight: Tensor
    bias: Tensor | None
    geometry: Geometry | None = None
    nonnegative_input: bool = False

    @classmethod
    def of_convolution(cls, node: Any, module: nn.Module) -> Affine:
        """The layer of a ``ConvolutionBackward0`` node, with the bias of ``module`` (the weight the node used)."""

        def saved(name: str) -> Any:
            return getattr(node, f"_saved_{name}")

        geometry: Geometry = (
            list(saved("stride")),
            list(saved("padding")),
            list(saved("dilation")),
            bool(saved("transposed")),
            list(saved("output_padding")),
            int(saved("groups")),
        )
        return cls(saved("weight"), _bias(module), geometry)

    @classmethod
    def of_linear(cls, module: nn.Module) -> Affine:
        """The layer of an ``nn.Linear``: :math:`y = x W^T + b`."""
        weight = module.weight
        assert isinstance(weight, Tensor)
        return cls(weight.detach(), _bias(module))

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """:math:`f(x; W, b)` with this layer's geometry."""
        if self.geometry is None:
            return F.linear(x, weight, bias)
        return torch.convolution(x, weight, bias, *self.geometry)

    def transpose(self, g: Tensor, weight: Tensor, like: Tensor) -> Tensor:
        """:math:`f^{*}(W, g)`: ``g`` (shaped as the output) carried back to an input shaped as ``like``."""
        if self.geometry is None:
            return g @ weight
        mask = [True, False, False]
        grad: Tensor = torch.ops.aten.convolution_backward(g, like, weight, None, *self.geometry, mask)[0]
        return grad

    def folded(self, norm: nn.modules.batchnorm._BatchNorm) -> Affine:
        """This layer followed by the eval-mode BatchNorm ``norm``, as one layer (see the module docstring)."""
        mean, var = norm.running_mean, norm.running_var
        assert mean is not None and var is not None
        scale = torch.rsqrt(var + norm.eps)
        shift = -mean * scale
        if norm.weight is not None:
            scale = scale * norm.weight
            shift = shift * norm.weight
        if norm.bias is not None:
            shift = shift + norm.bias
        scale, shift = scale.detach().to(self.weight), shift.detach().to(self.weight)
        bias = shift if self.bias is None else self.bias * scale + shift
        return replace(self, weight=self._scale_outputs(scale), bias=bias)

    def _scale_outputs(self, scale: Tensor) -> Tensor:
        """The weight with every output unit's weights multiplied by ``scale[unit]``."""
        w = self.weight
        tail = (1,) * (w.dim() - 2)
        if self.geometry is None or not self.geometry[3]:
            return w * scale.view(-1, 1, *tail)
        groups = self.geometry[5]  # transposed: (in, out/groups, *k), outputs grouped along dim 1 per group of inputs
        grouped = w.view(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        return (grouped * scale.view(groups, 1, -1, *tail)).view_as(w)

    @property
    def out_features(self) -> int:
        """The number of output units (channels) the layer computes."""
        if self.geometry is not None and self.geometry[3]:
            return self.weight.shape[1] * self.geometry[5]
        return self.weight.shape[0]


def _bias(module: nn.Module) -> Tensor | None:
    bias = getattr(module, "bias", None)
    return bias.detach() if isinstance(bias, Tensor) else None
