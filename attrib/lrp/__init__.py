"""Layer-wise relevance propagation: rules, and composites assigning them to a model's layers.

The method itself is :class:`attrib.LRP`; this module holds its two nouns:

* rules (:mod:`attrib.lrp.rules`): how one linear or convolution layer passes
  relevance to its input: :class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`,
  :class:`ZPlus`, :class:`Flat`, :class:`WSquare`, :class:`ZBox`;
* composites (:mod:`attrib.lrp.composites`): which rule each layer gets:
  :class:`EpsilonPlus`, :class:`EpsilonPlusFlat`, :class:`EpsilonAlpha2Beta1`,
  :class:`EpsilonGammaBox`, or a :class:`Composite` of your own.

There is no third noun (zennit's canonizers): BatchNorm is folded into the
layer before it for the call only, and residual sums share relevance in
proportion to their terms, without rewriting the model.

Example:
    >>> lrp = attrib.LRP(model, composite=attrib.lrp.EpsilonPlusFlat())
    >>> relevance = lrp.attribute(images, target=3)      # sums to the class-3 score, up to epsilon and biases
"""

from .composites import Composite, EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from .rules import AlphaBeta, Epsilon, Flat, Gamma, LayerRule, WSquare, ZBox, ZPlus

__all__ = [
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "EpsilonAlpha2Beta1",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "Flat",
    "Gamma",
    "LayerRule",
    "WSquare",
    "ZBox",
    "ZPlus",
]
