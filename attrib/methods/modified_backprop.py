"""Backpropagation with redefined ReLU backward passes: Guided Backprop and DeconvNet."""

from __future__ import annotations

from typing import Any

from ..core.batching import BatchSize
from ..core.inputs import InputsLike
from ..gradient_attribution import GradientAttribution
from ..rules import DeconvReLU, GuidedReLU
from ..targets import TargetLike


class _RuleBackprop(GradientAttribution):
    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """The rule-modified gradient of ``target`` for ``inputs`` (see :class:`attrib.Attribution`).

        ``batch_size``: the most examples in one forward/backward pass (an
        int, ``"auto"`` to halve on out-of-memory, or None for all at once).

        Raises:
            attrib.UnsupportedModelError: the model applies an activation
                other than ReLU, or runs a compiled region, on the way from
                the inputs to the target.
        """
        batch, grads = self._gradients_at_inputs(inputs, target, batch_size, additional_forward_args)
        return batch.restore(grads)


class GuidedBackprop(_RuleBackprop):
    r"""Guided backpropagation (Springenberg et al., 2015).

    The gradient of the target score, except that every ReLU ``y = max(x, 0)``
    passes back only positive gradients through active units:

    .. math:: \frac{\partial^* S}{\partial x} = g \,[x > 0]\,[g > 0],
              \qquad g = \frac{\partial^* S}{\partial y}

    The rule reaches ``nn.ReLU`` modules and functional, tensor-method and
    in-place ReLUs alike (see :mod:`attrib.rules`). Shapes as
    :class:`attrib.Saliency`; TorchRay's map is
    ``GuidedBackprop(model).then(ReduceChannels("abs_max"))``.

    Example:
        >>> maps = attrib.GuidedBackprop(model).attribute(images, target=3)
    """

    rule = GuidedReLU()


class Deconvnet(_RuleBackprop):
    r"""DeconvNet (Zeiler and Fergus, 2014).

    The gradient of the target score, except that every ReLU passes back the
    rectified gradient regardless of its forward activation:

    .. math:: \frac{\partial^* S}{\partial x} = g \,[g > 0],
              \qquad g = \frac{\partial^* S}{\partial y}

    On a model without ReLUs it is the plain gradient. Shapes as
    :class:`attrib.Saliency`.

    Example:
        >>> maps = attrib.Deconvnet(model).attribute(images, target=3)
    """

    rule = DeconvReLU()
