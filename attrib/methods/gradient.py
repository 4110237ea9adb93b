"""Plain-gradient methods: Saliency and Input x Gradient."""

from __future__ import annotations

from typing import Any

from ..core.batching import BatchSize
from ..core.inputs import InputsLike
from ..gradient_attribution import GradientAttribution, times_inputs
from ..targets import TargetLike


class Saliency(GradientAttribution):
    r"""Gradient saliency (Simonyan et al., 2014).

    .. math:: A_i(x) = \left| \frac{\partial S_t(x)}{\partial x_i} \right|

    where :math:`S_t` is the score of target :math:`t` (without the absolute
    value when ``abs=False``). Shapes: each map has its input's shape
    ``(N, ...)``, or ``(N, K, ...)`` for an ``(N, K)`` target. For TorchRay's
    ``(N, 1, H, W)`` map follow with ``ReduceChannels("abs_max")``.

    ``batch_size`` is the most examples in one forward/backward pass: a
    positive int, ``"auto"`` (start large, halve on out-of-memory) or None
    (all at once); peak memory is that of one such block. Inputs must be
    finite floating-point tensors on the model's device.

    Example:
        >>> maps = attrib.Saliency(model).attribute(images, target=3)
        >>> heat = attrib.Saliency(model).then(attrib.ReduceChannels("abs_max")).attribute(images)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        abs: bool = True,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """Saliency of ``target`` for ``inputs`` (see :class:`attrib.Attribution`)."""
        batch, grads = self._gradients_at_inputs(inputs, target, batch_size, additional_forward_args)
        return batch.restore([g.abs() for g in grads] if abs else list(grads))


class InputXGradient(GradientAttribution):
    r"""Input times gradient (Shrikumar et al., 2016).

    .. math:: A_i(x) = x_i \, \frac{\partial S_t(x)}{\partial x_i}

    Shapes and ``batch_size`` (an int, ``"auto"`` or None) as :class:`Saliency`.
    For a linear model it is the exact contribution of each feature,
    :math:`w_{t,i} x_i`.

    Example:
        >>> maps = attrib.InputXGradient(model).attribute(images, target=labels)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """Input x gradient of ``target`` for ``inputs`` (see :class:`attrib.Attribution`)."""
        batch, grads = self._gradients_at_inputs(inputs, target, batch_size, additional_forward_args)
        return batch.restore(times_inputs(batch.tensors, grads))
