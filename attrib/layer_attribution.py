"""Base of methods that explain through an inner layer's activations (Grad-CAM and kin)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .attribution import Attribution
from .core.backprop import backprop
from .core.forward import Model, run_model
from .core.layers import resolve_layer
from .rules import BackwardRule
from .targets import Target


class LayerAttribution(Attribution):
    """A method whose map lives on the activations ``A`` of one ``layer``.

    Args:
        model: the ``nn.Module`` to explain.
        layer: a dotted name (``"layer4.1.conv2"``) or a sub-module of ``model``.
        eval_mode: as for :class:`attrib.Attribution`.

    Subclasses get :meth:`_layer_gradients`: the layer's output for a block
    of rows and the gradient of the target scores w.r.t. it, with the graph
    cut at the layer so nothing below it is differentiated.
    """

    #: Backward rule applied above the layer, or None for the plain gradient.
    rule: BackwardRule | None = None

    def __init__(self, model: Model, layer: str | nn.Module, *, eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.layer_name, self.layer = resolve_layer(model, layer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layer={self.layer_name!r})"

    @contextmanager
    def _captured(self) -> Iterator[list[Tensor]]:
        """Record the layer's outputs, each turned into a leaf that requires grad.

        The model continues with a copy of the leaf, so an in-place op after
        the layer (``ReLU(inplace=True)``) cannot overwrite what was captured.
        """
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {self.layer_name!r} returns {type(output).__name__}; a layer method needs a layer "
                    "whose output is one Tensor"
                )
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()

        handle = self.layer.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _layer_gradients(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Activations ``(R, ...)`` of the layer and the gradients of the target scores w.r.t. them.

        The gradient is ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per row.
        """
        with self._captured() as captured:
            output = run_model(self.model, rows, args)
        if len(captured) != 1:
            raise ValueError(
                f"layer {self.layer_name!r} ran {len(captured)} times in one forward pass; "
                "choose a layer that runs exactly once"
            )
        activation = captured[0]
        (grad,) = backprop(target.scores(output, example), (activation,), self.rule)
        return activation.detach(), grad
