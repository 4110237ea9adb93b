r"""DeepLIFT's rescale rule (Shrikumar et al., 2017) as a backward-rule set.

DeepLIFT explains the difference of a score between an input :math:`x` and a
reference :math:`x'` by *multipliers* carried back from the score instead of
gradients. Both are run through the model in **one** forward pass on the rows
``[inputs; references]`` (row ``r`` of the first half is paired with row
``r + P`` of the second), inside a :class:`PairedTrace`; then
:class:`~attrib.core.graph.GraphBackward` carries the signal of the input
rows back under :class:`RescaleRule`:

* element-wise nonlinearities :math:`y = f(x)` (ReLU in every spelling:
  module, ``F.relu``, ``torch.relu``, tensor method, in-place, ``threshold``,
  ``clamp``; sigmoid, tanh, softplus, ELU/SELU/CELU, leaky ReLU, PReLU, GELU,
  SiLU, Mish, hardtanh/ReLU6, hardswish, hardsigmoid, log-sigmoid, the
  shrinks, ``exp``, ``log``, powers, ...) get the rescale multiplier

  .. math:: m = \frac{f(x) - f(x')}{x - x'}, \qquad
            m = f'(x) \text{ where } |x - x'| < \epsilon

  (:math:`\epsilon` = 1e-10 as in Captum), so the signal passed on is
  :math:`g \odot m`;
* max pooling (``MaxPool2d/3d``, their functional and adaptive forms, 1-D
  pooling, which PyTorch runs as 2-D): with :math:`y, y'` the pooled values
  and :math:`\bar y = \max(y, y')`, the output change is split as
  :math:`(\bar y - y') + (y - \bar y)`; the first part goes to the input's
  winner, the second to the reference's winner, and each input position
  receives :math:`\sum (\text{routed parts}) \cdot g / (x - x')` (its plain
  gradient where :math:`|x - x'| < \epsilon`). This is Captum's rule, except
  that overlapping windows add their shares (Captum's unpooling keeps one);
* linear operations (linear and convolution layers, sums, differences,
  scalings, means, average pooling, eval-mode batch norm, padding,
  up-sampling, reshapes, concatenations, indexing) keep their plain backward:
  for them the multiplier is the Jacobian;
* anything else between the target and the inputs (softmax, layer norm,
  attention, products or quotients of two tensors that both depend on the
  inputs, ``torch.where``, train-mode batch norm, unknown nodes) raises
  :class:`~attrib.rules.UnsupportedModelError` naming the operation, rather
  than silently mixing plain gradients into the multipliers.

The multipliers satisfy *summation-to-delta*: with the seed on the input rows,
:math:`\sum_i (x_i - x'_i)\, m_i = S(x) - S(x')` exactly wherever no
:math:`|x - x'| < \epsilon` fallback was taken. The reference rows carry no
signal (their entries are zeros). Because the rules act on autograd nodes, a
ReLU module called twice, a nonlinearity created inside ``forward``, a
functional call and an in-place module are all handled, which hook-based
implementations (Captum) get wrong.

Pairing requires every nonlinearity to see batch-first tensors whose first
dimension is the pass's ``2P`` rows; other layouts are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

from ..rules import BackwardRule, Grads, NodeRule, UnsupportedModelError, plain_backward
from .excitation_rules import PASS_THROUGH
from .graph import ForwardTrace

# Element-wise nonlinearities of one tensor: the rescale rule.
ELEMENTWISE = frozenset(
    {
        "ReluBackward0",
        "ThresholdBackward0",
        "ThresholdBackward1",
        "ClampBackward1",
        "ClampMinBackward0",
        "ClampMaxBackward0",
        "HardtanhBackward0",
        "LeakyReluBackward0",
        "LeakyReluBackward1",
        "EluBackward0",
        "EluBackward1",
        "CeluBackward0",
        "CeluBackward1",
        "GeluBackward0",
        "SiluBackward0",
        "MishBackward0",
        "SoftplusBackward0",
        "SigmoidBackward0",
        "TanhBackward0",
        "HardswishBackward0",
        "HardsigmoidBackward0",
        "LogSigmoidBackward0",
        "SoftshrinkBackward0",
        "HardshrinkBackward0",
        "PreluKernelBackward0",
        "ExpBackward0",
        "Expm1Backward0",
        "LogBackward0",
        "Log1PBackward0",
        "SqrtBackward0",
        "RsqrtBackward0",
        "PowBackward0",
        "AbsBackward0",
        "SinBackward0",
        "CosBackward0",
        "ErfBackward0",
        "AtanBackward0",
    }
)
# Function names (without a trailing "_") whose in-place forms overwrite the input the rule needs.
_ELEMENTWISE_FUNCTIONS = frozenset(
    {
        "relu",
        "threshold",
        "_threshold",
        "clamp",
        "clip",
        "clamp_min",
        "clamp_max",
        "hardtanh",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "sigmoid",
        "tanh",
        "silu",
        "mish",
        "hardswish",
        "hardsigmoid",
        "exp",
        "expm1",
        "log",
        "log1p",
        "sqrt",
        "rsqrt",
        "pow",
        "abs",
        "sin",
        "cos",
        "erf",
        "atan",
        "square",
        "__ipow__",
    }
)
# Max pooling: spatial dimensions of each kind (1-D pooling runs as 2-D).
MAX_POOLS = {
    "MaxPool2DWithIndicesBackward0": 2,
    "MaxPool3DWithIndicesBackward0": 3,
    "AdaptiveMaxPool2DBackward0": 2,
    "AdaptiveMaxPool3DBackward0": 3,
}
# Operand positions (in next_functions) that multiply each other: linear only if at most one depends on the inputs.
_PRODUCTS = {
    "MulBackward0": (0, 1),
    "MmBackward0": (0, 1),
    "BmmBackward0": (0, 1),
    "MvBackward0": (0, 1),
    "DotBackward0": (0, 1),
    "AddmmBackward0": (1, 2),
    "AddbmmBackward0": (1, 2),
    "BaddbmmBackward0": (1, 2),
    "ConvolutionBackward0": (0, 1),
}
_NORMALISATIONS = frozenset(
    {
        "NativeBatchNormBackward0",
        "CudnnBatchNormBackward0",
        "MiopenBatchNormBackward0",
        "NativeBatchNormLegitNoTrainingBackward0",
        "BatchNormBackward0",
    }
)
# Linear nodes: their plain backward is the multiplier.
LINEAR = (
    (PASS_THROUGH - {name for name in PASS_THROUGH if "MaxPool" in name})
    | frozenset(_PRODUCTS)
    | _NORMALISATIONS
    | frozenset(
        {
            "AddBackward0",
            "AddBackward1",
            "SubBackward0",
            "SubBackward1",
            "RsubBackward0",
            "RsubBackward1",
            "NegBackward0",
            "MulBackward1",
            "DivBackward0",
            "DivBackward1",
            "SumBackward0",
            "SumBackward1",
            "MeanBackward0",
            "MeanBackward1",
            "AvgPool2DBackward0",
            "AvgPool3DBackward0",
            "AdaptiveAvgPool2DBackward0",
            "AdaptiveAvgPool3DBackward0",
            "ExpandBackward0",
            "RepeatBackward0",
            "IndexBackward0",
            "IndexSelectBackward0",
            "GatherBackward0",
            "FlipBackward0",
            "RollBackward0",
            "ConstantPadNdBackward0",
            "ReflectionPad1DBackward0",
            "ReflectionPad2DBackward0",
            "ReflectionPad3DBackward0",
            "ReplicationPad1DBackward0",
            "ReplicationPad2DBackward0",
            "ReplicationPad3DBackward0",
            "UpsampleNearest1DBackward0",
            "UpsampleNearest2DBackward0",
            "UpsampleNearest3DBackward0",
            "UpsampleNearestExact1DBackward0",
            "UpsampleNearestExact2DBackward0",
            "UpsampleNearestExact3DBackward0",
            "UpsampleLinear1DBackward0",
            "UpsampleBilinear2DBackward0",
            "UpsampleBicubic2DBackward0",
            "UpsampleTrilinear3DBackward0",
            "UnfoldBackward0",
            "Im2ColBackward0",
            "Col2ImBackward0",
            "CumsumBackward0",
            "TrilBackward0",
            "TriuBackward0",
            "DiagonalBackward0",
            "AsStridedBackward0",
            "ExpandAsBackward0",
        }
    )
)


@dataclass(frozen=True)
class _Call:
    """One recorded call that produced an element-wise node: how to recompute ``f`` on the paired rows."""

    func: Callable[..., Any]
    first: Tensor  # the operand f acts on, as it was when f ran (a copy if f overwrote it)
    version: int
    rest: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    inplace: bool


def _writes_first_operand(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether ``func`` is the in-place form of a known element-wise function (it overwrites ``args[0]``)."""
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.startswith("__"):
        return name[:-1] in _ELEMENTWISE_FUNCTIONS
    if name not in _ELEMENTWISE_FUNCTIONS:
        return False
    # F.relu(x, True), F.leaky_relu(x, 0.1, True), F.hardtanh(x, -1, 1, True), F.silu(x, inplace=True), x **= 2
    return name == "__ipow__" or kwargs.get("inplace") is True or any(a is True for a in args[1:])


class PairedTrace(ForwardTrace):
    """The trace of a forward pass on ``rows = 2P`` rows ``[inputs; references]``, for :class:`RescaleRule`.

    Besides what :class:`~attrib.core.graph.ForwardTrace` records (the
    model's gradient hooks), it keeps, for each element-wise node, the call
    that produced it and its operand (copied first when the call is in place,
    as ``nn.ReLU(inplace=True)`` is), so the rule can recompute :math:`f` on
    both halves. Use it as the context of the forward pass::

        with PairedTrace(2 * p) as trace:
            output = model(torch.cat([x, x_ref]))
    """

    def __init__(self, rows: int) -> None:
        super().__init__(frozenset())
        if rows < 2 or rows % 2:
            raise ValueError(f"a paired pass needs an even number of rows (inputs then references), got {rows}")
        self.rows = rows
        self._calls: dict[Node, _Call] = {}

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else None
        if not isinstance(first, Tensor) or not first.requires_grad:
            return super().__torch_function__(func, types, args, kwargs)
        inplace = _writes_first_operand(func, args, kwargs)
        # Kept as it is before the call: an unforeseen in-place call then shows as a version change, never as
        # silently overwritten data.
        kept = first.detach().clone() if inplace else first.detach()
        version = kept._version
        out = super().__torch_function__(func, types, args, kwargs)
        node = out.grad_fn if isinstance(out, Tensor) else None
        if node is not None and node.name() in ELEMENTWISE:
            self._calls[node] = _Call(func, kept, version, tuple(args[1:]), dict(kwargs), inplace)
        return out

    def call(self, node: Node) -> _Call:
        """The recorded call that produced the element-wise ``node``."""
        call = self._calls.get(node)
        if call is None:
            raise UnsupportedModelError(
                f"DeepLift could not see the call that produced {node.name()}: it ran inside a composite function "
                "(e.g. F.tanhshrink), or was called in a way the trace does not record (keyword-only tensor). "
                "Call the nonlinearity directly (a module, F.* or torch.* function on a tensor)"
            )
        if call.first._version != call.version:
            raise RuntimeError(
                f"the input of {node.name()} was modified in place after the nonlinearity ran; "
                "DeepLift needs it as it was: use an out-of-place operation there"
            )
        return call

    def halves(self, t: Tensor, node: Node) -> tuple[Tensor, Tensor]:
        """The input rows and the reference rows of a batch-first tensor of the paired pass."""
        if t.dim() == 0 or t.shape[0] != self.rows:
            raise UnsupportedModelError(
                f"DeepLift pairs each input row with its reference row along the first dimension, but "
                f"{node.name()} acts on a tensor of shape {tuple(t.shape)}, whose first dimension is not the "
                f"{self.rows} rows of the pass; the model must keep the batch first at every nonlinearity"
            )
        half = self.rows // 2
        return t[:half], t[half:]


def _paired(node: Node, trace: ForwardTrace | None) -> PairedTrace:
    if not isinstance(trace, PairedTrace):
        raise UnsupportedModelError(
            f"the rescale rule at {node.name()} needs the forward pass on [inputs; references] to run inside "
            "attrib.core.deeplift_rules.PairedTrace"
        )
    return trace


def _on_path(node: Node, position: int, limit: int = 32) -> bool:
    """Whether operand ``position`` of ``node`` may depend on the explained inputs.

    An operand that requires grad only through parameters (a callable model's
    weights, which the state guard does not freeze) is constant for the rule.
    The walk gives up after ``limit`` nodes and then assumes a dependence.
    """
    functions = node.next_functions
    first = functions[position][0] if position < len(functions) else None
    if first is None:
        return False
    stack: list[Node] = [first]
    while stack:
        current = stack.pop()
        limit -= 1
        if limit < 0:
            return True
        variable = getattr(current, "variable", None)  # set on the accumulator of a leaf
        if variable is not None:
            if not isinstance(variable, nn.Parameter):
                return True
            continue
        stack.extend(child for child, _ in current.next_functions if child is not None)
    return False


def _pair(top: Tensor) -> Tensor:
    """The signal of a pair: ``top`` on the input rows, zeros on the reference rows."""
    return torch.cat([top, torch.zeros_like(top)])


class RescaleRule(BackwardRule):
    r"""DeepLIFT's rescale rule set (see :mod:`attrib.core.deeplift_rules`).

    Args:
        eps: where :math:`|x - x'| <` ``eps`` a nonlinearity passes its plain
            gradient instead of :math:`\Delta y / \Delta x` (Captum's 1e-10).

    The rule needs a :class:`PairedTrace` of the forward pass; it holds no
    per-call state, so one instance serves every call and thread.
    """

    name = "DeepLift"

    def __init__(self, eps: float = 1e-10) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a non-negative finite float, got {eps!r}")
        self.eps = float(eps)

    def rule_for(self, node: Node) -> NodeRule | None:
        name = node.name()
        if name in ELEMENTWISE:
            if any(_on_path(node, i) for i in range(1, len(node.next_functions))):
                raise UnsupportedModelError(
                    f"DeepLift's rescale rule needs {name} to be a function of one tensor, but a second operand "
                    "(e.g. a PReLU weight or an exponent) also depends on a tensor that requires grad"
                )
            return self._rescale
        if name in MAX_POOLS:
            return self._max_pool
        if name in LINEAR:
            _check_linear(node)
            return None
        raise UnsupportedModelError(
            f"DeepLift's rescale rule is defined for element-wise nonlinearities, max pooling and linear operations, "
            f"but the model applies {name} between the inputs and the target (softmax, layer norm, attention, "
            "torch.where and custom autograd functions are not element-wise); a plain gradient there would be "
            "silently wrong. Explain the logits before such an operation, or use IntegratedGradients"
        )

    def _rescale(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        paired = _paired(node, trace)
        (g,) = grads
        assert g is not None
        small = paired.memo(node, "small", lambda: self._differences(node, paired)[1])
        multiplier = paired.memo(node, "m", lambda: self._elementwise_multiplier(node, paired))
        g_top, _ = paired.halves(g, node)
        (plain, *_) = plain_backward(node, grads)
        assert plain is not None
        top = torch.where(small, paired.halves(plain, node)[0], g_top * multiplier)
        return (_pair(top),) + (None,) * (len(node.next_functions) - 1)

    def _differences(self, node: Node, paired: PairedTrace) -> tuple[Tensor, Tensor]:
        """``x - x'`` at a nonlinearity's input and where it is below ``eps``."""
        dx = paired.memo(node, "dx", lambda: _minus(*paired.halves(self._input(node, paired), node)))
        # Compared in float32 at least: eps (1e-10) rounds to 0 in float16, where equal values then divide 0 by 0.
        return dx, dx.abs().to(torch.promote_types(dx.dtype, torch.float32)) < self.eps

    def _input(self, node: Node, paired: PairedTrace) -> Tensor:
        if node.name() in MAX_POOLS:
            x: Tensor = node._saved_self  # type: ignore[attr-defined]
            return x
        return paired.call(node).first

    def _elementwise_multiplier(self, node: Node, paired: PairedTrace) -> Tensor:
        r""":math:`(f(x) - f(x')) / (x - x')` on the input rows (1 in the denominator where it is below ``eps``)."""
        call = paired.call(node)
        x = call.first
        with torch.no_grad():
            y = call.func(x.clone() if call.inplace else x, *call.rest, **call.kwargs)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            raise UnsupportedModelError(
                f"DeepLift expected {node.name()} to be element-wise, but recomputing it changed the shape"
            )
        dx, small = self._differences(node, paired)
        dy = _minus(*paired.halves(y, node))
        return dy / torch.where(small, torch.ones_like(dx), dx)

    def _max_pool(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        paired = _paired(node, trace)
        (g,) = grads
        assert g is not None
        x: Tensor = node._saved_self  # type: ignore[attr-defined]
        indices: Tensor = node._saved_result1  # type: ignore[attr-defined]
        spatial = MAX_POOLS[node.name()]
        if x.dim() != spatial + 2:
            raise UnsupportedModelError(f"DeepLift needs batched (N, C, ...) inputs at {node.name()}")
        pooled = paired.memo(node, "y", lambda: _pooled(x, indices, spatial))
        y, y_ref = paired.halves(pooled, node)
        g_top, _ = paired.halves(g, node)
        high = torch.maximum(y, y_ref)
        # The output change (high - y_ref) + (y - high), routed to the input's and the reference's winners.
        (routed, *_) = plain_backward(node, (torch.cat([g_top * (high - y_ref), g_top * (y - high)]),))
        assert routed is not None
        to_input, to_reference = paired.halves(routed, node)
        dx, small = self._differences(node, paired)
        (plain, *_) = plain_backward(node, grads)
        assert plain is not None
        shares = (to_input + to_reference) / torch.where(small, torch.ones_like(dx), dx)
        top = torch.where(small, paired.halves(plain, node)[0], shares)
        return (_pair(top),) + (None,) * (len(node.next_functions) - 1)


def _minus(a: Tensor, b: Tensor) -> Tensor:
    return a - b


def _pooled(x: Tensor, indices: Tensor, spatial: int) -> Tensor:
    """The max-pooled values of ``x`` read at the winners ``indices`` (flat over the spatial dimensions)."""
    flat = x.flatten(-spatial)
    return flat.gather(-1, indices.flatten(-spatial)).view(indices.shape)


def _check_linear(node: Node) -> None:
    """Refuse linear-looking nodes that are not linear in the inputs: products of two such tensors, train-mode BN."""
    name = node.name()
    positions = _PRODUCTS.get(name)
    if positions is not None and all(_on_path(node, i) for i in reversed(positions)):
        raise UnsupportedModelError(
            f"DeepLift's rescale rule is not defined for {name} of two tensors that both depend on the inputs "
            "(a multiplicative interaction, as in attention or gating); a plain gradient there would be silently "
            "wrong"
        )
    if name == "DivBackward0" and _on_path(node, 1):
        raise UnsupportedModelError(
            "DeepLift's rescale rule is not defined for a division by a tensor that depends on the inputs"
        )
    if name in _NORMALISATIONS and bool(getattr(node, "_saved_training", False)):
        raise UnsupportedModelError(
            "DeepLift needs batch norm in eval mode: in train mode it mixes the input rows with the reference rows "
            "(leave eval_mode=True)"
        )
