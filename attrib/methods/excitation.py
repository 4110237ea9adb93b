r"""Excitation backprop and its contrastive form (Zhang et al., 2016): marginal winning probabilities at a layer.

The target's probability mass is carried from the model output down to the
layer under the excitation rule set (:mod:`attrib.core.excitation_rules`): on
a linear or convolution layer :math:`y = f(x, W)`,

.. math:: p' = x \odot f^{*}\big(W^+,\; p \oslash (f(x, W^+) + \epsilon)\big),
          \qquad W^+ = \max(W, 0),

pooling alike without weights, max pooling to the winner, batch norm and
reshapes unchanged, residual sums split in proportion to their terms. The
seed is each target score's gradient w.r.t. the model output (a one-hot for
a class, as TorchRay). The map is the channel sum of the signal at the layer:

.. math:: M_{u} = \sum_c p_{c u}

Maps are ``(N, 1, h, w)`` at the layer's resolution, ``(N, K, 1, h, w)`` for
an ``(N, K)`` target (one forward pass, ``K`` backward passes); bring them to
the input size with :class:`attrib.Resize`. The layer's output is read
channels-first, ``(N, C, *grid)`` (a linear layer's ``(N, C)`` gives ``(N, 1)``). Operations the rule is not
defined for (GELU, attention, ...) between the target and the layer raise
:class:`attrib.UnsupportedModelError`; parameters are never modified.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..core.backprop import rooted_seeds
from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.excitation_rules import ExcitationRule
from ..core.forward import Model, run_model
from ..core.graph import GraphBackward, Slot, recording
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.layers import resolve_layer
from ..layer_attribution import LayerAttribution
from ..targets import Target, TargetLike, resolve_target

_LINEAR_NODES = frozenset({"AddmmBackward0", "MmBackward0", "ConvolutionBackward0"})


class ExcitationBackprop(LayerAttribution):
    r"""Excitation backprop (Zhang et al., 2016): the target's marginal winning probability at ``layer``.

    .. math:: M_u = \sum_c p_{cu}, \qquad
              p' = x \odot f^{*}\big(W^+, p \oslash (f(x, W^+) + \epsilon)\big) \text{ layer by layer}

    (see :mod:`attrib.methods.excitation` and
    :mod:`attrib.core.excitation_rules` for every rule). Runs on torchvision's
    ResNet, VGG, DenseNet, GoogLeNet, SqueezeNet and ShuffleNet unmodified.

    Args:
        model: the ``nn.Module`` to explain.
        layer: a dotted name or a sub-module whose output is explained.
        eps: the :math:`\epsilon` of the rule (TorchRay's 1e-20).
        eval_mode: as for :class:`attrib.Attribution`.

    Raises:
        attrib.UnsupportedModelError: (on ``attribute``) an operation between
            the target and the layer has no excitation rule.

    Example:
        >>> eb = attrib.ExcitationBackprop(model, "features.9").then(attrib.Resize())
        >>> maps = eb.attribute(images, target=3)                    # (N, 1, H, W)
    """

    rule: ExcitationRule = ExcitationRule()

    def __init__(
        self, model: Model, layer: str | nn.Module, *, eps: float = 1e-20, eval_mode: bool = True
    ) -> None:
        super().__init__(model, layer, eval_mode=eval_mode)
        if eps != type(self).rule.eps:
            self.rule = ExcitationRule(eps)

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """The excitation map of ``target`` for ``inputs`` at the layer.

        Returns:
            ``(N, 1, *grid)`` at the layer's resolution, or ``(N, K, 1, *grid)``
            for an ``(N, K)`` target.
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        batch_size = check_batch_size(batch_size)

        def run(start: int, stop: int) -> Tensor:
            rows = batch.block(start, stop)
            example = torch.arange(start, stop, device=batch.device)
            activation, signal = self._signal(rows, args.block(start, stop), resolved, example)
            return self._reduce(signal, 2 if signal.dim() == activation.dim() + 1 else 1)

        with self._guard():
            blocks = map_blocks(batch.n, batch_size, run)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _signal(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The layer's activation and the excitation signal ``(R, ...)`` or ``(R, K, ...)`` there."""
        return self._layer_gradients(rows, args, target, example)

    def _reduce(self, signal: Tensor, channel_dim: int) -> Tensor:
        """The map from the signal: its channel sum."""
        return signal.sum(channel_dim, keepdim=True)


class ContrastiveExcitationBackprop(ExcitationBackprop):
    r"""Contrastive excitation backprop (Zhang et al., 2016): the target's excitation minus its dual's.

    The dual signal is excitation backprop with the classifier's weights
    negated (:math:`(-W)^+` in place of :math:`W^+` at ``classifier_layer``,
    through the rule; the parameters are untouched), carried down to
    ``contrast_layer`` and subtracted from the target's signal there; the
    difference is carried on down to ``layer`` and the map is clamped:

    .. math:: M_u = \max\Big(\sum_c p_{cu}, 0\Big), \qquad
              p = \mathrm{EB}_{\text{contrast}\to\text{layer}}\big(p^{\text{target}} - p^{\text{dual}}\big)

    As TorchRay's ``contrastive_excitation_backprop``. With ``contrast_layer``
    equal to ``layer`` the map is :math:`\max(\sum_c (p^{\text{target}} -
    p^{\text{dual}}), 0)`. Shapes as :class:`ExcitationBackprop`.

    Args:
        model: the ``nn.Module`` to explain.
        layer: where the map is read (a dotted name or a sub-module).
        contrast_layer: where the dual is subtracted: ``layer`` or a layer
            between it and the classifier.
        classifier_layer: the linear or convolution layer whose weights are
            negated for the dual; default: the model's last ``nn.Linear`` or
            ``nn.Conv*`` module (as TorchRay).
        eps: as for :class:`ExcitationBackprop`.
        eval_mode: as for :class:`attrib.Attribution`.

    Example:
        >>> ceb = attrib.ContrastiveExcitationBackprop(model, "features.9", "features.30", "classifier.6")
        >>> maps = ceb.attribute(images, target=3)                   # (N, 1, h, w)
    """

    def __init__(
        self,
        model: Model,
        layer: str | nn.Module,
        contrast_layer: str | nn.Module,
        classifier_layer: str | nn.Module | None = None,
        *,
        eps: float = 1e-20,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, eps=eps, eval_mode=eval_mode)
        self.contrast_name, self.contrast_layer = resolve_layer(model, contrast_layer)
        if classifier_layer is None:
            assert isinstance(model, nn.Module)
            linear = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
            if not linear:
                raise ValueError("the model has no nn.Linear or nn.Conv layer; pass classifier_layer")
            classifier_layer = linear[-1]
        self.classifier_name, self.classifier_layer = resolve_layer(model, classifier_layer)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, layer={self.layer_name!r}, "
            f"contrast_layer={self.contrast_name!r}, classifier_layer={self.classifier_name!r})"
        )

    @contextmanager
    def _watched(self) -> Iterator[dict[str, list[Slot]]]:
        """Record where the contrast layer's and the classifier's outputs enter the graph."""
        seen: dict[str, list[Slot]] = {"contrast": [], "classifier": []}
        # The hooks sit on modules other threads may be running: act only on this thread's forward passes.
        owner = threading.get_ident()

        def watch(key: str, name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if threading.get_ident() != owner:
                    return
                if not isinstance(output, Tensor) or output.grad_fn is None:
                    raise ValueError(
                        f"{key} layer {name!r} must output one Tensor that depends on layer {self.layer_name!r} "
                        "(choose a layer above it)"
                    )
                seen[key].append((output.grad_fn, output.output_nr))

            return hook

        # Registered after the layer's own capture hook: on the same module they see the captured copy.
        handles = [
            self.contrast_layer.register_forward_hook(watch("contrast", self.contrast_name)),
            self.classifier_layer.register_forward_hook(watch("classifier", self.classifier_name)),
        ]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    def _signal(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, Tensor]:
        with self._captured() as captured, self._watched() as seen, recording(self.rule) as trace:
            output = run_model(self.model, rows, args)
        activation = self._single(captured)
        for key, name in (("contrast", self.contrast_name), ("classifier", self.classifier_name)):
            if len(seen[key]) != 1:
                raise ValueError(
                    f"{key} layer {name!r} ran {len(seen[key])} times in one forward pass; it must run once"
                )
        contrast = seen["contrast"][0]
        classifier, _ = seen["classifier"][0]
        if classifier.name() not in _LINEAR_NODES:
            raise ValueError(
                f"classifier layer {self.classifier_name!r} must be a linear or convolution layer applied directly "
                f"(its output comes from {classifier.name()})"
            )
        # The scores first: a tuple/dict output needs a callable target, which reads the raw output.
        scores = target.scores(output, example)
        root, seeds = rooted_seeds(scores, output)
        dual_rule = ExcitationRule(self.rule.eps, negated=(classifier,))
        dual_pass = GraphBackward(root, [contrast], dual_rule, trace)
        main_pass = GraphBackward(root, [activation], self.rule, trace)
        if classifier not in dual_pass.needed or contrast[0] not in main_pass.needed:
            raise ValueError(
                f"the classifier {self.classifier_name!r}, the contrast layer {self.contrast_name!r} and the layer "
                f"{self.layer_name!r} must lie on one path from the output down (classifier above contrast above layer)"
            )
        signals = []
        for seed in seeds:
            (dual,) = dual_pass(seed)
            (signal,) = main_pass(seed, {contrast: dual.neg().add})  # g -> g - dual at the contrast layer
            signals.append(signal)
        stacked = signals[0] if scores.dim() == 1 else torch.stack(signals, dim=1)
        return activation.detach(), stacked

    def _reduce(self, signal: Tensor, channel_dim: int) -> Tensor:
        return signal.sum(channel_dim, keepdim=True).clamp(min=0)
