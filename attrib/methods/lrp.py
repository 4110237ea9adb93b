r"""Layer-wise relevance propagation (Bach et al., 2015), with rules assigned per layer by a composite."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.backprop import rooted_seeds
from ..core.batching import BatchSize
from ..core.forward import run_model
from ..core.graph import GraphBackward
from ..core.inputs import InputsLike
from ..core.lrp_nodes import LrpRules, lrp_recording
from ..gradient_attribution import GradientAttribution, _leaf
from ..lrp.composites import Composite, EpsilonPlusFlat
from ..targets import Target, TargetLike


class LRP(GradientAttribution):
    r"""Layer-wise relevance propagation: the target's score carried down to the inputs, layer by layer.

    The relevance at the model output :math:`y` is the target's score,
    :math:`R_y = y \odot \partial S / \partial y` (the one-hot times the score
    for a class, as in Captum). Each layer passes its relevance on to its
    inputs under the rule the ``composite`` gives it (:mod:`attrib.lrp`):

    .. math:: R_x = x \odot f^{*}\big(W, R_y \oslash \mathrm{stab}(f(x; W, b))\big)
              \quad\text{(the epsilon rule, for one)}

    Activations and BatchNorm pass relevance on unchanged (BatchNorm is
    folded into the layer before it, for the call only: the model is never
    modified), sums (residual connections) and average pooling share it in
    proportion to their terms, max pooling gives it to the winner. The map is
    the relevance at each input, ``(N, ...)`` per input, or ``(N, K, ...)``
    for an ``(N, K)`` target (one forward pass, ``K`` backward passes);
    ``batch_size`` rows run per forward pass and the maps do not depend on
    it. Under epsilon rules with zero biases it sums to the score, up to
    epsilon: :math:`\sum_i R_{x_i} \approx S(x)`.

    Rules act on the autograd graph of the call's forward pass, and are
    assigned to nodes through the modules that produced them (recorded by
    hooks on this thread, removed after the pass), so functional and
    in-place ReLUs and reused modules are handled. Operations LRP has no
    rule for (softmax, layer norm, attention, a functional ``F.conv2d``, a
    linear module the composite gives no rule) raise
    :class:`attrib.UnsupportedModelError` naming them. Agrees with zennit
    (with its BatchNorm-merging and ResNet canonizers) to rounding, but for
    zennit's merged BatchNorm keeping its :math:`\epsilon` (a relative
    :math:`\epsilon/2` per merged BatchNorm).

    Args:
        model: the ``nn.Module`` to explain.
        composite: the rule of each layer; default
            :class:`attrib.lrp.EpsilonPlusFlat` (flat first layer, z+ for
            convolutions, epsilon for linear layers).
        eval_mode: as for :class:`attrib.Attribution`.

    Example:
        >>> lrp = attrib.LRP(model, composite=attrib.lrp.EpsilonGammaBox(low=-2.2, high=2.7))
        >>> relevance = lrp.attribute(images, target=3, batch_size=32)   # (N, 3, H, W)
    """

    def __init__(self, model: nn.Module, composite: Composite | None = None, *, eval_mode: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "LRP assigns its rules to the model's modules, so model must be an nn.Module, "
                f"got {type(model).__name__}"
            )
        super().__init__(model, eval_mode=eval_mode)
        composite = EpsilonPlusFlat() if composite is None else composite
        if not isinstance(composite, Composite):
            raise TypeError(
                "composite must be an attrib.lrp.Composite (e.g. attrib.lrp.EpsilonPlusFlat()), "
                f"got {type(composite).__name__}"
            )
        self.composite = composite

    def __repr__(self) -> str:
        return f"LRP({type(self.model).__name__}, composite={self.composite!r})"

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """The relevance of each input feature for ``target`` (see the class docstring).

        Returns:
            One map per input, shaped as the input ``(N, ...)``, or
            ``(N, K, ...)`` for an ``(N, K)`` target; a tensor for a tensor, a
            tuple for a tuple.
        """
        batch, maps = self._gradients_at_inputs(inputs, target, batch_size, additional_forward_args)
        return batch.restore(maps)

    def _block_gradients(
        self, rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor
    ) -> tuple[Tensor, ...]:
        """The input relevance of one block of rows: one forward pass, one rule-modified backward pass per target."""
        model = self.model
        assert isinstance(model, nn.Module)
        rules = self.composite.assign(model)
        leaves = tuple(_leaf(r) for r in rows)
        with lrp_recording(model) as record:
            # The model sees copies of the leaves, so in-place ops on its inputs are legal.
            output = run_model(model, tuple(leaf.clone() for leaf in leaves), args)
        scores = target.scores(output, example)
        # Relevance starts at the output, or at the scores where they are not read off the output (a Neuron).
        root, seeds = rooted_seeds(scores, output)
        rule_set = LrpRules(record, rules, self.composite.stabilizer, root, keep=len(seeds) > 1)
        carry = GraphBackward(root, leaves, rule_set, record.trace)
        value = root.detach()
        per_seed = [carry(seed * value) for seed in seeds]
        if scores.dim() == 1:
            return tuple(r.detach() for r in per_seed[0])
        return tuple(torch.stack(maps, dim=1).detach() for maps in zip(*per_seed))
