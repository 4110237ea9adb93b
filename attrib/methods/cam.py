r"""Class activation maps from the activations and gradients of one layer: Grad-CAM and its variants.

Every method here is one forward pass and one backward pass per target at
the layer (the graph is cut there), followed by a weighting. With the layer's
activations :math:`A \in \mathbb{R}^{C \times h \times w}` and the gradient
:math:`G = \partial S / \partial A` of the target score :math:`S`, a method
chooses weights :math:`W` (per channel, :math:`C \times 1 \times 1`, or per
position, :math:`C \times h \times w`) and the map is

.. math:: M = \mathrm{ReLU}\Big(\sum_k W_k \odot A_k\Big)

(:func:`channel_sum`); ``relu=False`` keeps the signs. Maps are at
the layer's resolution, ``(N, 1, h, w)``, or ``(N, K, 1, h, w)`` for an
``(N, K)`` target (one forward pass, ``K`` backward passes). Bring them to
the input size with the :class:`attrib.Resize` step:

    >>> cam = attrib.GradCAM(model, "layer4").then(attrib.Resize())
    >>> maps = cam.attribute(images, target=3)            # (N, 1, H, W)

The layer may output ViT tokens ``(N, 1 + h*w, C)`` or a channels-last Swin
map ``(N, h, w, C)``: see :mod:`attrib.core.tokens` and the ``reshape=``
option of :class:`attrib.LayerAttribution`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import Model
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.tokens import Reshape
from ..layer_attribution import LayerAttribution
from ..targets import TargetLike, resolve_target


def channel_sum(weights: Tensor, activations: Tensor, grid_dims: int, relu: bool) -> Tensor:
    """``ReLU(sum_k W_k * A_k)``: the channel sum shared by every CAM.

    Args:
        weights: ``(..., C, *s)`` with ``s`` the grid or all ones (per-channel weights).
        activations: ``(..., C, *grid)``, broadcasting with ``weights``.
        grid_dims: the number of spatial dimensions (2 for images).
        relu: clamp the sum at zero.

    Returns:
        ``(..., 1, *grid)``.
    """
    cam = (weights * activations).sum(-1 - grid_dims, keepdim=True)
    return cam.clamp(min=0) if relu else cam


def spatial_sum(t: Tensor, grid_dims: int) -> Tensor:
    """Sum over the trailing ``grid_dims`` dimensions, kept as size-1 dimensions."""
    return t.sum(tuple(range(-grid_dims, 0)), keepdim=True)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


class GradientCAM(LayerAttribution):
    """Base of the CAMs weighted from the layer's activations and gradients.

    A subclass defines :meth:`weights` (and :attr:`relu`, the default of the
    ``relu`` option); everything else (targets, blocks of ``batch_size`` rows,
    token layouts, ``K`` targets from one forward pass) is shared.
    """

    #: Whether the map is clamped at zero unless the call says otherwise.
    relu: bool = True

    @abstractmethod
    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Weights ``(R, K, C, *s)`` (``s`` all ones, or the grid) from ``A`` ``(R, 1, C, *grid)`` and ``G``
        ``(R, K, C, *grid)``."""

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        relu: bool | None = None,
    ) -> Tensor:
        """The class activation map of ``target`` for ``inputs`` (a tensor, or a tuple whose first entry drives
        the layout).

        Args:
            relu: clamp the map at zero (default: the method's :attr:`relu`).

        Returns:
            ``(N, 1, *grid)`` at the layer's resolution, or ``(N, K, 1, *grid)``
            for an ``(N, K)`` target.
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        batch_size = check_batch_size(batch_size)
        clamp = self.relu if relu is None else bool(relu)

        def run(start: int, stop: int) -> Tensor:
            rows = batch.block(start, stop)
            example = torch.arange(start, stop, device=batch.device)
            activation, grad = self._layer_gradients(rows, args.block(start, stop), resolved, example)
            layout = self._layout(activation, rows)
            per_target = grad.dim() == activation.dim() + 1
            a = layout.to_grid(activation).unsqueeze(1)
            g = layout.to_grid_per_target(grad) if per_target else layout.to_grid(grad).unsqueeze(1)
            cam = channel_sum(self.weights(a, g), a, a.dim() - 3, clamp)
            return cam if per_target else cam.squeeze(1)

        with self._guard():
            blocks = map_blocks(batch.n, batch_size, run)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


class GradCAM(GradientCAM):
    r"""Grad-CAM (Selvaraju et al., 2017).

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \alpha_k A_k\Big), \qquad
              \alpha_k = \frac{1}{hw} \sum_{ij} \frac{\partial S}{\partial A_{kij}}

    ``relu=False`` keeps the signs (Captum's ``LayerGradCam`` default). Shapes:
    ``(N, 1, h, w)`` at the layer, ``(N, K, 1, h, w)`` for an ``(N, K)`` target.

    Example:
        >>> cam = attrib.GradCAM(model, "layer4").then(attrib.Resize())
        >>> maps = cam.attribute(images, target=torch.tensor([[3, 5]] * len(images)))  # (N, 2, 1, H, W)
    """

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(tuple(range(3, gradients.dim())), keepdim=True)


class HiResCAM(GradientCAM):
    r"""HiResCAM (Draelos and Carin, 2020): the element-wise product, summed over channels.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \frac{\partial S}{\partial A_k} \odot A_k\Big)

    Shapes as :class:`GradCAM`.

    Example:
        >>> maps = attrib.HiResCAM(model, "layer4").attribute(images, target=3)
    """

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients


class LinearApprox(HiResCAM):
    r"""Linear approximation (TorchRay's ``linear_approx``): the first-order Taylor term at the layer.

    .. math:: M = \sum_k \frac{\partial S}{\partial A_k} \odot A_k

    HiResCAM without the ReLU (pass ``relu=True`` to add it). Shapes as :class:`GradCAM`.

    Example:
        >>> maps = attrib.LinearApprox(model, "features.29").attribute(images, target=3)
    """

    relu = False


class XGradCAM(GradientCAM):
    r"""XGrad-CAM (Fu et al., 2020): gradients weighted by the normalised activations.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \alpha_k A_k\Big), \qquad
              \alpha_k = \sum_{ij} \frac{A_{kij}}{\sum_{i'j'} A_{ki'j'}} \frac{\partial S}{\partial A_{kij}}

    A channel whose activations sum to zero gets weight 0 (pytorch-grad-cam
    adds 1e-7 to the denominator instead). Shapes as :class:`GradCAM`.

    Example:
        >>> maps = attrib.XGradCAM(model, "layer4").attribute(images, target=3)
    """

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        grid = activations.dim() - 3
        return safe_divide(spatial_sum(gradients * activations, grid), spatial_sum(activations, grid))


class GradCAMPlusPlus(GradientCAM):
    r"""Grad-CAM++ (Chattopadhyay et al., 2018), with the closed-form weights of the paper (its eq. 19).

    With :math:`g = \partial S / \partial A` (the exponential-score
    derivation turns the higher derivatives into powers of :math:`g`):

    .. math:: a_{kij} = \frac{g_{kij}^2}{2 g_{kij}^2 + \sum_{i'j'} A_{ki'j'}\, g_{kij}^3 + \epsilon},
              \qquad \alpha_k = \sum_{ij} a_{kij} \,\mathrm{ReLU}(g_{kij}), \qquad
              M = \mathrm{ReLU}\Big(\sum_k \alpha_k A_k\Big)

    and :math:`a = 0` where :math:`g = 0` or the denominator vanishes.
    ``eps`` defaults to 0, the paper's formula; pytorch-grad-cam uses
    ``eps=1e-6``, which shrinks the weights of positions with tiny gradients.
    Shapes as :class:`GradCAM`.

    Example:
        >>> maps = attrib.GradCAMPlusPlus(model, "layer4").attribute(images, target=3)
    """

    def __init__(
        self,
        model: Model,
        layer: str | nn.Module | None = None,
        *,
        eps: float = 0.0,
        reshape: Reshape | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, reshape=reshape, eval_mode=eval_mode)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        g2 = gradients.square()
        denominator = 2 * g2 + spatial_sum(activations, activations.dim() - 3) * g2 * gradients + self.eps
        alpha = torch.where(gradients != 0, safe_divide(g2, denominator), torch.zeros_like(g2))
        return spatial_sum(alpha * gradients.clamp(min=0), activations.dim() - 3)


class LayerCAM(GradientCAM):
    r"""LayerCAM (Jiang et al., 2021): activations weighted by their positive gradients.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(\frac{\partial S}{\partial A_k}\Big) \odot A_k\Big)

    Shapes as :class:`GradCAM`.

    Example:
        >>> maps = attrib.LayerCAM(model, "layer3").attribute(images, target=3)
    """

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.clamp(min=0)
