r"""A layer's activations, and activation times gradient, at its output or input."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import Model
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..gradient_attribution import times_inputs
from ..layer_attribution import ExplicitLayerAttribution, bool_option
from ..targets import TargetLike, resolve_target


class LayerActivation(ExplicitLayerAttribution):
    r"""The activations :math:`A = f_\ell(x)` of one layer (Captum's ``LayerActivation``).

    The map is the layer's output ``(N, ...)`` (its input with
    ``attribute_to_layer_input=True``), computed without gradients,
    ``batch_size`` examples at a time. Inputs may be integer token ids.

    **Target-agnostic**: the activation does not depend on a target, and
    ``target`` never changes the values. With ``target=None`` the model output
    is never read (any model works). Any other ``target`` only sets the shape:
    an ``(N,)`` target (or a scalar, a callable, ...) gives the same
    ``(N, ...)`` map as ``target=None``; an ``(N, K)`` target only repeats that
    map ``K`` times, ``(N, K, ...)``. The target is still checked against the
    model output as by every method. For a map that depends on the target use
    :class:`LayerGradientXActivation` or :class:`attrib.LayerIntegratedGradients`.

    Example:
        >>> acts = attrib.LayerActivation(model, "layer3").attribute(images)         # (N, 256, h, w)
        >>> emb = attrib.LayerActivation(text_model, "embedding").attribute(token_ids)  # (N, T, D)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Tensor:
        """The layer's output (or input) for ``inputs``: ``(N, ...)``, or ``(N, K, ...)`` for an ``(N, K)`` target.

        ``target`` does not change the values (the activation depends on no
        target): it is checked against the model output, and an ``(N, K)``
        target only repeats the ``(N, ...)`` map ``K`` times.
        """
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        at_input = bool_option(attribute_to_layer_input, "attribute_to_layer_input")
        if target is None:
            activation, _ = self._forward_layer(batch, args, batch_size, at_input=at_input)
            return activation
        activation, _, scores = self._layer_activations(batch, args, batch_size, target, at_input=at_input)
        if scores.dim() == 1:
            return activation
        return activation.unsqueeze(1).expand(-1, scores.shape[1], *activation.shape[1:])


class LayerGradientXActivation(ExplicitLayerAttribution):
    r"""Layer gradient times activation (Captum's ``LayerGradientXActivation``).

    .. math:: M = A \odot \frac{\partial S_t}{\partial A}, \qquad A = f_\ell(x)

    for the layer's output :math:`A` (its input with
    ``attribute_to_layer_input=True``); ``multiply_by_inputs=False`` gives the
    gradient :math:`\partial S_t / \partial A` alone. One forward pass and one
    backward pass per target, cut at the layer; inputs may be integer token
    ids. Shapes: the layer's ``(N, ...)``, or ``(N, K, ...)`` for an ``(N, K)`` target.

    Example:
        >>> gxa = attrib.LayerGradientXActivation(model, "layer3")
        >>> maps = gxa.attribute(images, target=torch.tensor([[3, 5]] * len(images)))  # (N, 2, 256, h, w)
    """

    def __init__(
        self, model: Model, layer: str | nn.Module, *, multiply_by_inputs: bool = True, eval_mode: bool = True
    ) -> None:
        super().__init__(model, layer, eval_mode=eval_mode)
        self.multiply_by_inputs = bool_option(multiply_by_inputs, "multiply_by_inputs")

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Tensor:
        """``A * dS/dA`` of ``target`` for ``inputs`` at the layer: ``(N, ...)`` or ``(N, K, ...)``."""
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        batch_size = check_batch_size(batch_size)
        at_input = bool_option(attribute_to_layer_input, "attribute_to_layer_input")

        def run(start: int, stop: int) -> Tensor:
            example = torch.arange(start, stop, device=batch.device)
            activation, grad = self._layer_gradients(
                batch.block(start, stop), args.block(start, stop), resolved, example, at_input=at_input
            )
            return times_inputs((activation,), (grad,))[0] if self.multiply_by_inputs else grad

        with self._guard():
            blocks = map_blocks(batch.n, batch_size, run)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)
