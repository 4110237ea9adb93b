"""Base of methods that explain through an inner layer's activations (Grad-CAM and kin)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import Attribution, _clean_scores
from .core.backprop import backprop
from .core.batching import BatchSize, map_blocks
from .core.forward import Model, run_model
from .core.graph import recording
from .core.inputs import ForwardArgs, InputBatch
from .core.layers import find_spatial_layer, resolve_layer
from .core.tokens import Layout, Reshape, infer_layout
from .rules import BackwardRule
from .targets import Target, TargetLike, resolve_target

#: Held while a ``layer=None`` is resolved. One lock for all methods: it is taken on first calls only, and a
#: per-instance lock would stop ``copy.deepcopy`` of a method (the randomisation metrics copy methods).
_RESOLVING = threading.RLock()


class LayerAttribution(Attribution):
    """A method whose map lives on the activations ``A`` of one ``layer``.

    Args:
        model: the ``nn.Module`` to explain.
        layer: a dotted name (``"layer4.1.conv2"``), a sub-module of ``model``,
            or None: the last layer with a spatial output, found by watching
            one forward pass on the first call (see
            :func:`attrib.core.layers.find_spatial_layer`); ``repr`` then names it.
        reshape: a callable turning the layer's output ``(N, ...)`` into a map
            ``(N, C, h, w)``, for token layouts that cannot be inferred (see
            :mod:`attrib.core.tokens`; ViT tokens and Swin's channels-last
            maps are read without it).
        eval_mode: as for :class:`attrib.Attribution`.

    Subclasses get :meth:`_layer_gradients`: the layer's output for a block
    of rows and the gradient of the target scores w.r.t. it, with the graph
    cut at the layer so nothing below it is differentiated; and
    :meth:`_layer_activations`: the layer's output and the clean target
    scores without gradients, ``batch_size`` rows at a time.
    """

    #: Backward rule applied above the layer, or None for the plain gradient.
    rule: BackwardRule | None = None

    def __init__(
        self,
        model: Model,
        layer: str | nn.Module | None = None,
        *,
        reshape: Reshape | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if reshape is not None and not callable(reshape):
            raise TypeError(
                f"reshape must be a callable (N, ...) -> (N, C, h, w) or None; got {type(reshape).__name__}"
            )
        self.reshape = reshape
        self._layer: tuple[str, nn.Module] | None = None
        self._layer_chosen = layer is None
        if layer is None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"a layer method needs model to be an nn.Module, got {type(model).__name__}")
        else:
            self._layer = resolve_layer(model, layer)

    @property
    def layer(self) -> nn.Module:
        """The explained layer (with ``layer=None``, known after the first call)."""
        if self._layer is None:
            raise RuntimeError("layer=None is resolved on the first call to attribute(); call it first")
        return self._layer[1]

    @property
    def layer_name(self) -> str:
        """The explained layer's dotted name (with ``layer=None``, known after the first call)."""
        if self._layer is None:
            raise RuntimeError("layer=None is resolved on the first call to attribute(); call it first")
        return self._layer[0]

    def __repr__(self) -> str:
        if self._layer is None:
            layer = "None (chosen on the first call)"
        else:
            layer = f"None, chose {self._layer[0]!r}" if self._layer_chosen else repr(self._layer[0])
        return f"{type(self).__name__}({type(self.model).__name__}, layer={layer})"

    def _ensure_layer(self, rows: tuple[Tensor, ...], args: tuple[Any, ...]) -> None:
        """Resolve ``layer=None`` by watching one forward pass on the first example of ``rows``.

        Threads sharing this method may make their first calls at once: the
        layer is resolved once, under a lock, and every thread uses that one.
        """
        if self._layer is not None:
            return
        assert isinstance(self.model, nn.Module)
        first = tuple(r[:1].detach().clone().requires_grad_(r.is_floating_point()) for r in rows)
        first_args = tuple(
            a[:1] if isinstance(a, Tensor) and a.dim() and a.shape[0] == rows[0].shape[0] else a for a in args
        )
        with _RESOLVING:
            if self._layer is not None:  # another thread resolved it while this one waited
                return
            with self._guard():
                self._layer = find_spatial_layer(
                    self.model, lambda: self.model(*first, *first_args), tuple(rows[0].shape), self.reshape
                )

    def _layout(self, activation: Tensor, rows: tuple[Tensor, ...]) -> Layout:
        """How the layer's output ``activation`` for ``rows`` reads as a map ``(R, C, *grid)``."""
        return infer_layout(self.layer_name, tuple(activation.shape), tuple(rows[0].shape), self.layer, self.reshape)

    @contextmanager
    def _captured(self, replace: Callable[[Tensor], Tensor] | None = None) -> Iterator[list[Tensor]]:
        """Record the layer's outputs, each turned into a leaf that requires grad.

        The model continues with a copy of the leaf, so an in-place op after
        the layer (``ReLU(inplace=True)``) cannot overwrite what was captured.
        With ``replace`` nothing is recorded and the model continues with
        ``replace(output)`` instead (ablations at the layer).
        """
        captured: list[Tensor] = []
        # The hook sits on a module other threads may be running: act only on this thread's forward passes.
        owner = threading.get_ident()

        def hook(module: nn.Module, args: Any, output: Any) -> Tensor | None:
            if threading.get_ident() != owner:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {self.layer_name!r} returns {type(output).__name__}; a layer method needs a layer "
                    "whose output is one Tensor"
                )
            if replace is not None:  # nothing is recorded: blocks of replaced outputs do not pile up
                return replace(output.detach())
            leaf = output.detach().requires_grad_(torch.is_grad_enabled() and output.is_floating_point())
            captured.append(leaf)
            return leaf.clone()

        handle = self.layer.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _single(self, captured: list[Tensor]) -> Tensor:
        if len(captured) != 1:
            raise ValueError(
                f"layer {self.layer_name!r} ran {len(captured)} times in one forward pass; "
                "choose a layer that runs exactly once"
            )
        return captured[0]

    def _layer_gradients(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Activations ``(R, ...)`` of the layer and the gradients of the target scores w.r.t. them.

        The gradient is ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per row.
        """
        self._ensure_layer(rows, args)
        with self._captured() as captured, recording(self.rule) as trace:
            output = run_model(self.model, rows, args)
        activation = self._single(captured)
        (grad,) = backprop(target.scores(output, example), (activation,), self.rule, output=output, trace=trace)
        return activation.detach(), grad

    def _layer_activations(
        self, batch: InputBatch, args: ForwardArgs, batch_size: BatchSize, target: TargetLike
    ) -> tuple[Tensor, Target, Tensor]:
        """The layer's output ``(N, ...)``, the resolved ``target`` and its clean scores, without gradients.

        Runs ``batch_size`` rows at a time under the state guard. The model
        output of a block is reduced to scores at once and never stored: a
        callable target gets the raw output (a tuple, dict or dataclass-like
        output is fine there); any other target needs a Tensor output, and
        :func:`attrib.core.forward.tensor_output` says so otherwise. The scores
        are ``(N,)``, or ``(N, K)`` for ``K`` targets per example.
        """
        self._ensure_layer(batch.block(0, 1), args.block(0, 1))
        resolved = resolve_target(target, batch.n, batch.device)
        top1 = resolved.kind == "predicted"

        def run(start: int, stop: int) -> tuple[Tensor, Tensor]:
            with self._captured() as captured:
                output = run_model(self.model, batch.block(start, stop), args.block(start, stop))
            activation = self._single(captured).detach()
            if top1:  # the predicted class is known only once every block has run
                return activation, _clean_scores(output)
            return activation, resolved.scores(output, torch.arange(start, stop, device=batch.device)).detach()

        with self._guard(), torch.no_grad():
            blocks = map_blocks(batch.n, batch_size, run)
        activations, parts = zip(*blocks)
        scores = torch.cat(parts)
        if top1:
            resolved = resolved.with_prediction(lambda: scores)
            scores = resolved.scores(scores, torch.arange(batch.n, device=scores.device))
        return torch.cat(activations), resolved, scores
