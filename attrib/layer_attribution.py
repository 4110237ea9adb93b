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
    cut at the layer so nothing below it is differentiated;
    :meth:`_replaced_gradients`: the same gradient with given values put in
    place of the layer's output (path methods in layer space);
    :meth:`_layer_activations`: the layer's output and the clean target
    scores without gradients, ``batch_size`` rows at a time. Each takes
    ``at_input=True`` to work at the layer's (one positional) input instead.
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
    def _captured(
        self, replace: Callable[[Tensor], Tensor] | None = None, *, at_input: bool = False
    ) -> Iterator[list[Tensor]]:
        """Record the layer's outputs (its input with ``at_input``), each turned into a leaf that requires grad.

        The model continues with a copy of the leaf, so an in-place op after
        the layer (``ReLU(inplace=True)``) cannot overwrite what was captured.
        With ``replace`` nothing is recorded and the model continues with
        ``replace(output)`` instead (ablations at the layer); with ``at_input``
        the layer itself gets ``replace(input)``. A layer's input is its one
        positional argument, which must be a Tensor.
        """
        captured: list[Tensor] = []
        # The hook sits on a module other threads may be running: act only on this thread's forward passes.
        owner = threading.get_ident()

        def swap(value: Any, what: str) -> Tensor:
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"layer {self.layer_name!r} {what} {type(value).__name__}; a layer method needs a layer "
                    f"whose {'input' if at_input else 'output'} is one Tensor"
                )
            if replace is not None:  # nothing is recorded: blocks of replaced outputs do not pile up
                return replace(value.detach())
            leaf = value.detach().requires_grad_(torch.is_grad_enabled() and value.is_floating_point())
            captured.append(leaf)
            return leaf.clone()

        def hook(module: nn.Module, args: Any, output: Any) -> Tensor | None:
            if threading.get_ident() != owner:
                return None
            return swap(output, "returns")

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Tensor] | None:
            if threading.get_ident() != owner:
                return None
            if len(args) != 1:
                raise TypeError(
                    f"layer {self.layer_name!r} is called with {len(args)} positional inputs; attributing to a "
                    "layer's input needs a layer called with one Tensor"
                )
            return (swap(args[0], "is called with"),)

        if at_input:
            handle = self.layer.register_forward_pre_hook(pre_hook)
        else:
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
        self,
        rows: tuple[Tensor, ...],
        args: tuple[Any, ...],
        target: Target,
        example: Tensor,
        *,
        at_input: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Activations ``(R, ...)`` of the layer and the gradients of the target scores w.r.t. them.

        The gradient is ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per
        row. With ``at_input`` both are taken at the layer's input instead.
        """
        self._ensure_layer(rows, args)
        with self._captured(at_input=at_input) as captured, recording(self.rule) as trace:
            output = run_model(self.model, rows, args)
        activation = self._single(captured)
        self._check_differentiable(activation, at_input)
        (grad,) = backprop(self._layer_scores(target, output, example), (activation,), self.rule, output=output,
                           trace=trace)
        return activation.detach(), grad

    def _check_differentiable(self, value: Tensor, at_input: bool) -> None:
        """A TypeError if the layer's value has no gradient to take (token ids at an embedding's input)."""
        if not value.is_floating_point():
            where = "input" if at_input else "output"
            raise TypeError(
                f"layer {self.layer_name!r} has an {where} of dtype {value.dtype}, which has no gradient; attribute "
                "to a floating-point value (for token ids: the embedding's output, not its input)"
            )

    def _replaced_gradients(
        self,
        rows: tuple[Tensor, ...],
        args: tuple[Any, ...],
        target: Target,
        example: Tensor,
        values: Tensor,
        *,
        at_input: bool = False,
    ) -> Tensor:
        """Gradients of the target scores w.r.t. ``values`` put in place of the layer's output (input).

        The model runs on ``rows``; where the layer's output (its input with
        ``at_input``) would be, it continues with ``values`` ``(R, ...)``
        instead. Returns ``(R, ...)``, or ``(R, K, ...)`` for ``K`` scores per row.
        """
        self._ensure_layer(rows, args)
        leaf = values.detach().requires_grad_(True)
        calls: list[None] = []

        def substitute(original: Tensor) -> Tensor:
            if original.shape != leaf.shape:
                raise ValueError(
                    f"layer {self.layer_name!r} gave shape {tuple(original.shape)} where the values put in its "
                    f"place have shape {tuple(leaf.shape)}; the layer must give the same shape for every call"
                )
            calls.append(None)
            return leaf.clone()  # in-place ops after the layer may then change the copy, never the leaf

        with self._captured(replace=substitute, at_input=at_input), recording(self.rule) as trace:
            output = run_model(self.model, rows, args)
        if len(calls) != 1:
            raise ValueError(
                f"layer {self.layer_name!r} ran {len(calls)} times in one forward pass; "
                "choose a layer that runs exactly once"
            )
        (grad,) = backprop(self._layer_scores(target, output, example), (leaf,), self.rule, output=output, trace=trace)
        return grad

    def _layer_scores(self, target: Target, output: Tensor, example: Tensor) -> Tensor:
        """The target scores of a pass whose graph starts at the layer; a Neuron below the layer is refused.

        A Neuron target whose layer runs before the explained one does not depend on it: its gradient there
        would be an all-zero map, so this says so instead.
        """
        scores = target.scores(output, example)
        if target.kind == "neuron" and not scores.requires_grad:
            raise ValueError(
                f"the Neuron target's layer runs before the explained layer {self.layer_name!r}, so its score does "
                "not depend on that layer; explain a layer at or below the Neuron's layer"
            )
        return scores

    def _layer_activations(
        self,
        batch: InputBatch,
        args: ForwardArgs,
        batch_size: BatchSize,
        target: TargetLike,
        *,
        at_input: bool = False,
    ) -> tuple[Tensor, Target, Tensor]:
        """The layer's output ``(N, ...)``, the resolved ``target`` and its clean scores, without gradients.

        Runs ``batch_size`` rows at a time under the state guard. The model
        output of a block is reduced to scores at once and never stored: a
        callable target gets the raw output (a tuple, dict or dataclass-like
        output is fine there); any other target needs a Tensor output, and
        :func:`attrib.core.forward.tensor_output` says so otherwise. The scores
        are ``(N,)``, or ``(N, K)`` for ``K`` targets per example. With
        ``at_input`` the layer's input is returned instead of its output.
        """
        self._ensure_layer(batch.block(0, 1), args.block(0, 1))
        resolved = resolve_target(target, batch.n, batch.device)
        top1 = resolved.kind == "predicted"

        def reduce(output: Tensor, start: int, stop: int) -> Tensor:
            if top1:  # the predicted class is known only once every block has run
                return _clean_scores(output)
            return resolved.scores(output, torch.arange(start, stop, device=batch.device)).detach()

        activations, reduced = self._forward_layer(batch, args, batch_size, reduce, at_input=at_input)
        assert reduced is not None
        scores: Tensor = reduced
        if top1:
            resolved = resolved.with_prediction(lambda: scores)
            scores = resolved.scores(scores, torch.arange(batch.n, device=scores.device))
        return activations, resolved, scores

    def _forward_layer(
        self,
        batch: InputBatch,
        args: ForwardArgs,
        batch_size: BatchSize,
        reduce: Callable[[Tensor, int, int], Tensor] | None = None,
        *,
        at_input: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The layer's output (input with ``at_input``) ``(N, ...)`` without gradients, and optionally
        ``reduce(output, start, stop)`` of each block's model output, concatenated (None without ``reduce``)."""

        self._ensure_layer(batch.block(0, 1), args.block(0, 1))

        def run(start: int, stop: int) -> tuple[Tensor, Tensor | None]:
            with self._captured(at_input=at_input) as captured:
                output = run_model(self.model, batch.block(start, stop), args.block(start, stop))
            activation = self._single(captured).detach()
            return activation, None if reduce is None else reduce(output, start, stop)

        with self._guard(), torch.no_grad():
            blocks = map_blocks(batch.n, batch_size, run)
        activations = [a for a, _ in blocks]
        reduced = [r for _, r in blocks if r is not None]
        return torch.cat(activations), torch.cat(reduced) if reduced else None


class ExplicitLayerAttribution(LayerAttribution):
    """Base of the methods that attribute to a named layer's output or input (Captum's layer family).

    Unlike the CAMs these need no spatial layout, so there is nothing to
    choose a layer by: ``layer`` (a dotted name or a sub-module) is required.

    Args:
        model: the ``nn.Module`` to explain.
        layer: a dotted name (``"embedding"``, ``"layer3.1"``) or a sub-module of ``model``.
        eval_mode: as for :class:`attrib.Attribution`.
    """

    def __init__(self, model: Model, layer: str | nn.Module, *, eval_mode: bool = True) -> None:
        if layer is None:
            raise TypeError(f"{type(self).__name__} needs layer=, a dotted module name or a sub-module of the model")
        super().__init__(model, layer, eval_mode=eval_mode)


def bool_option(value: object, name: str) -> bool:
    """``value`` if it is a bool, else a TypeError naming the option ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value
