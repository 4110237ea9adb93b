"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM, as a composition."""

from __future__ import annotations

from torch import nn

from ..compose import Product
from ..core.tokens import Reshape
from ..postprocess import Resize
from .cam import GradCAM
from .modified_backprop import GuidedBackprop


class GuidedGradCAM(Product):
    r"""Guided Grad-CAM (Selvaraju et al., 2017): :math:`\mathrm{GB}(x) \odot \mathrm{Resize}(\mathrm{GradCAM}(x))`.

    Nothing but the composition

    ``GuidedBackprop(model) * GradCAM(model, layer).then(Resize(mode=mode))``

    (a :class:`attrib.Product`): both factors explain the same target, a top-1
    target is resolved once, options go to the factor that takes them. Maps
    have the input's shape ``(N, C, H, W)`` (``(N, K, C, H, W)`` for an
    ``(N, K)`` target). ``mode`` is the upsampling of the Grad-CAM map:
    bilinear by default, ``"nearest"`` for Captum's ``GuidedGradCam``.
    Guided backprop raises :class:`attrib.UnsupportedModelError` on models
    with activations other than ReLU.

    Example:
        >>> maps = attrib.GuidedGradCAM(model, "layer4").attribute(images, target=3)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        mode: str = "bilinear",
        reshape: Reshape | None = None,
        eval_mode: bool = True,
    ) -> None:
        grad_cam = GradCAM(model, layer, reshape=reshape, eval_mode=eval_mode)
        super().__init__(GuidedBackprop(model, eval_mode=eval_mode), grad_cam.then(Resize(mode=mode)))
