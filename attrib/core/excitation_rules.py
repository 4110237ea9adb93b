r"""The excitation backprop rule set (Zhang et al., 2016): marginal winning probabilities.

The signal :math:`p` is a probability mass carried from the target down the
network. Per kind of autograd node:

* linear and convolution (``AddmmBackward0``, ``MmBackward0``,
  ``ConvolutionBackward0``), :math:`y = f(x, W)`: with :math:`W^+ = \max(W, 0)`
  and the bias ignored,

  .. math:: p' = x \odot f^{*}\big(W^+,\; p \oslash (f(x, W^+) + \epsilon)\big)

  where :math:`f^*` is the layer's transpose (its plain input backward). The
  weights are read from the node's saved tensors and :math:`W^+` is a new
  tensor: parameters are never modified. A rule set built with ``negated``
  nodes uses :math:`(-W)^+` there (the contrastive dual's classifier).
* average, adaptive average pooling and means: the same with the pooling as
  :math:`f` (no weights);
* max pooling: the plain backward, which routes the signal to the winner;
* batch normalisation: the signal passes unchanged (as TorchRay; the plain
  backward would scale it by :math:`\gamma/\sigma`);
* sums ``a + b`` (residual connections): split in proportion,
  :math:`p_a = p\, a / (a + b)`, :math:`p_b = p\, b / (a + b)` (0 where the sum
  is 0, as TorchRay's ``eltwise_sum`` but without its 0/0); a constant
  operand (a bias) takes no share, the other takes all of it;
* ReLU: the plain backward :math:`p\,[x > 0]` (the signal reaching a ReLU is
  already zero where it is off, so this passes it unchanged);
* views, reshapes, permutes, transposes, concatenations, splits, copies and
  channel shuffles: the plain backward, which moves the signal unchanged
  (dropout in eval mode leaves no node);
* anything else on the path (GELU, attention, unknown nodes):
  :class:`attrib.UnsupportedModelError` naming the node.

With non-negative inputs at every linear layer, signals stay non-negative,
and a linear layer passes on :math:`\sum_j p'_j = \sum_i p_i\, z_i / (z_i +
\epsilon)`, :math:`z = f(x, W^+)`: the mass is conserved except on units with
no positive excitation (:math:`z_i = 0`), whose mass is dropped. Negative
inputs (the image at a first convolution; a batch-norm output feeding a
convolution, as in ShuffleNet's branches) are used as they are, as in
TorchRay, and can make the signal negative there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.graph import Node

from ..rules import (
    UNSUPPORTED_ACTIVATIONS,
    BackwardRule,
    Grads,
    NodeRule,
    UnsupportedModelError,
    is_rectifier,
    plain_backward,
)
from .graph import ForwardTrace

# Nodes whose plain backward already is the excitation rule: they move, copy, select or route the signal.
PASS_THROUGH = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "TBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "SqueezeBackward4",
        "UnsqueezeBackward0",
        "UnsqueezeBackward1",
        "CloneBackward0",
        "ToCopyBackward0",
        "CatBackward0",
        "StackBackward0",
        "SplitBackward0",
        "SplitBackward1",
        "SplitWithSizesBackward0",
        "UnsafeSplitBackward0",
        "UnsafeSplitWithSizesBackward0",
        "UnbindBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "ChannelShuffleBackward0",
        "NativeChannelShuffleBackward0",
        "PixelShuffleBackward0",
        "PixelUnshuffleBackward0",
        "MaxPool1DWithIndicesBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "AdaptiveMaxPool1DBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
        "AddBackward1",  # x + constant: the constant takes no share
    }
)
NORMALISATIONS = frozenset(
    {
        "NativeBatchNormBackward0",
        "CudnnBatchNormBackward0",
        "MiopenBatchNormBackward0",
        "NativeBatchNormLegitNoTrainingBackward0",
        "BatchNormBackward0",
    }
)
POOLS = frozenset(
    {
        "AvgPool2DBackward0",
        "AvgPool3DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AdaptiveAvgPool3DBackward0",
    }
)
MEANS = frozenset({"MeanBackward0", "MeanBackward1"})
_PRODUCTS = frozenset({"AddmmBackward0", "MmBackward0"})
_SUMS = frozenset({"AddBackward0"})


def _saved(node: Node, name: str) -> Any:
    """What the node saved for its backward under ``name`` (``_saved_<name>``)."""
    return getattr(node, f"_saved_{name}")


def _positive(weight: Tensor, negate: bool) -> Tensor:
    return (-weight if negate else weight).clamp(min=0)


class ExcitationRule(BackwardRule):
    r"""Excitation backprop as a rule set (see :mod:`attrib.core.excitation_rules`).

    Args:
        eps: the :math:`\epsilon` added to :math:`f(x, W^+)` (TorchRay's 1e-20).
        negated: nodes (of linear or convolution layers) whose weights are
            negated before taking the positive part: the contrastive dual.
    """

    name = "excitation backprop"
    recorded = _PRODUCTS | _SUMS | MEANS

    def __init__(self, eps: float = 1e-20, negated: Collection[Node] = ()) -> None:
        if not eps >= 0:
            raise ValueError(f"eps must be a non-negative float, got {eps!r}")
        self.eps = float(eps)
        self.negated = frozenset(negated)

    def rule_for(self, node: Node) -> NodeRule | None:
        name = node.name()
        if name in PASS_THROUGH or is_rectifier(node):
            return None
        if name == "ConvolutionBackward0":
            return self._convolution
        if name in _PRODUCTS:
            return self._product
        if name in POOLS or name in MEANS:
            return self._pool
        if name in NORMALISATIONS:
            return _pass_first
        if name in _SUMS:
            return _split_sum
        what = f"{UNSUPPORTED_ACTIVATIONS[name]} ({name})" if name in UNSUPPORTED_ACTIVATIONS else name
        raise UnsupportedModelError(
            f"excitation backprop is not defined for {what}, which lies between the target and the explained "
            "layer; it is defined for linear, convolution, pooling, batch-norm, ReLU, residual-sum and reshaping "
            "operations (a plain gradient there would be silently wrong). Choose a layer above it, or a gradient "
            "method"
        )

    def _convolution(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (p,) = grads
        assert p is not None
        x: Tensor = _saved(node, "input")
        negate = node in self.negated
        geometry = (
            list(_saved(node, "stride")),
            list(_saved(node, "padding")),
            list(_saved(node, "dilation")),
            bool(_saved(node, "transposed")),
            list(_saved(node, "output_padding")),
            int(_saved(node, "groups")),
        )
        w = _memo(trace, node, f"w+{negate}", lambda: _positive(_saved(node, "weight"), negate))
        z = _memo(trace, node, f"z{negate}", lambda: torch.convolution(x, w, None, *geometry).add_(self.eps))
        gx = torch.ops.aten.convolution_backward(p / z, x, w, None, *geometry, [True, False, False])[0]
        return (gx.mul_(x),) + (None,) * (len(node.next_functions) - 1)

    def _product(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (p,) = grads
        assert p is not None
        left = _saved(node, "mat1") if node.name() == "AddmmBackward0" else _saved(node, "self")
        right = _saved(node, "mat2")
        if (left is None) == (right is None):
            raise UnsupportedModelError(
                f"excitation backprop needs one operand of {node.name()} to be a fixed weight, but both "
                "depend on the explained layer (an attention-like product)"
            )
        x = _recorded_input(node, trace)
        negate = node in self.negated
        if left is None:  # y = x @ W
            w = _memo(trace, node, f"w+{negate}", lambda: _positive(right, negate))
            z = _memo(trace, node, f"z{negate}", lambda: (x @ w).add_(self.eps))
            gx = (p / z) @ w.T
        else:  # y = W @ x
            w = _memo(trace, node, f"w+{negate}", lambda: _positive(left, negate))
            z = _memo(trace, node, f"z{negate}", lambda: (w @ x).add_(self.eps))
            gx = w.T @ (p / z)
        out: list[Tensor | None] = [None] * len(node.next_functions)
        out[-1 if left is not None else -2] = gx.mul_(x)
        return tuple(out)

    def _pool(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (p,) = grads
        assert p is not None
        name = node.name()
        if name in MEANS:
            sizes = tuple(_saved(node, "self_sym_sizes"))
            matching = [t for t in _operands(node, trace) if tuple(t.shape) == sizes]
            if not matching:
                raise UnsupportedModelError(f"the input of {name} was not recorded in the forward pass")
            x = matching[0]
        else:
            x = _saved(node, "self")
        z = _memo(trace, node, "z", lambda: pooled(name, node, x, p).add_(self.eps))
        (g,) = plain_backward(node, (p / z,))
        assert g is not None
        return (g * x,)


def _memo(trace: ForwardTrace | None, node: Node, key: str, compute: Callable[[], Tensor]) -> Tensor:
    return compute() if trace is None else trace.memo(node, key, compute)


def pooled(name: str, node: Node, x: Tensor, p: Tensor) -> Tensor:
    """The forward of an average pooling or mean node, recomputed from its input."""
    if name == "MeanBackward0":
        return x.mean()
    if name == "MeanBackward1":  # dims come back as unsigned: wrap them to the tensor's rank
        dims = tuple((d - (1 << 64) if d >= 1 << 63 else d) % x.dim() for d in _saved(node, "dim"))
        return x.mean(dims, keepdim=bool(_saved(node, "keepdim")))
    if name == "AdaptiveAvgPool2DBackward0":
        return F.adaptive_avg_pool2d(x, (p.shape[-2], p.shape[-1]))
    if name == "AdaptiveAvgPool3DBackward0":
        return F.adaptive_avg_pool3d(x, (p.shape[-3], p.shape[-2], p.shape[-1]))
    geometry: tuple[Any, ...] = (
        list(_saved(node, "kernel_size")),
        list(_saved(node, "stride")),
        list(_saved(node, "padding")),
        bool(_saved(node, "ceil_mode")),
        bool(_saved(node, "count_include_pad")),
        _saved(node, "divisor_override"),
    )
    return F.avg_pool2d(x, *geometry) if name == "AvgPool2DBackward0" else F.avg_pool3d(x, *geometry)


def _operands(node: Node, trace: ForwardTrace | None) -> tuple[Tensor, ...]:
    if trace is None:
        raise UnsupportedModelError(
            f"excitation backprop needs the forward operands of {node.name()}; run the forward pass inside "
            "attrib.core.graph.recording(rule)"
        )
    return trace.operands(node)


def _recorded_input(node: Node, trace: ForwardTrace | None) -> Tensor:
    """The operand of a product node that is on the graph (the other one is the fixed weight)."""
    operands = _operands(node, trace)
    if len(operands) != 1 or operands[0].dim() != 2:
        raise UnsupportedModelError(f"could not tell the 2-D input of {node.name()} from its weight")
    return operands[0]


def _pass_first(node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
    """Batch norm: the signal passes to the normalised input unchanged."""
    return (grads[0],) + (None,) * (len(node.next_functions) - 1)


def _split_sum(node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
    """``y = a + alpha b``: each operand on the path takes the share ``p * term / y`` of the signal."""
    (p,) = grads
    assert p is not None
    on_path = [child is not None for child, _ in node.next_functions]
    if not all(on_path):  # a constant operand (bias) takes no share
        return tuple(p if flag else None for flag in on_path)
    a, b = _operands(node, trace)
    alpha = _saved(node, "alpha")
    term_b = b if alpha == 1 else b * alpha
    total = a + term_b
    nonzero = total != 0
    ratio = torch.where(nonzero, p / torch.where(nonzero, total, torch.ones_like(total)), torch.zeros_like(p))
    return (a * ratio, term_b * ratio)
