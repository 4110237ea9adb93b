r"""Layer-wise relevance propagation as a backward-rule set acting on autograd nodes.

Relevance :math:`R` is carried from the model output down to the inputs.
Which rule a linear or convolution layer gets is chosen per *module* (by an
:class:`attrib.lrp.Composite`); every other node gets a rule by its kind:

* linear and convolution nodes (``AddmmBackward0``, ``MmBackward0``,
  ``ConvolutionBackward0``) of an ``nn.Linear`` / ``nn.Conv*`` /
  ``nn.ConvTranspose*`` module: the module's :class:`LayerRule` (epsilon,
  gamma, alpha-beta, ...), computed from the layer :math:`y = f(x; W, b)`
  (:class:`~attrib.core.affine.Affine`). An eval-mode BatchNorm module
  applied directly to the layer's output (and read by nothing else) is
  folded into :math:`W, b` for the call; the module's parameters are only read;
* BatchNorm and element-wise activations (ReLU in every spelling, leaky
  ReLU, ELU, GELU, SiLU, sigmoid, tanh, ...): relevance passes unchanged
  (zennit's ``Pass``);
* average pooling, adaptive average pooling and means, :math:`z = P x`:
  :math:`R_x = x \odot P^{*}(R \oslash \mathrm{stab}(z))` (zennit's ``Norm``),
  with the composite's stabilizer;
* sums :math:`z = a + \alpha b` of two tensors on the path (residual
  connections): :math:`R_a = a \odot R \oslash \mathrm{stab}(z)`,
  :math:`R_b = \alpha b \odot R \oslash \mathrm{stab}(z)` (zennit's ResNet
  canonizer: a ``Norm`` over the stacked summands); a sum with a constant
  passes :math:`R` to the other operand;
* max pooling: the plain backward (the winner takes the relevance);
  reshapes, concatenations, copies, selections: the plain backward, which
  moves relevance unchanged;
* anything else on the path (products of two tensors, softmax, layer norm,
  attention, a linear node no module produced): :class:`attrib.UnsupportedModelError`
  naming it.

Here :math:`\mathrm{stab}(z) = z + \epsilon\,\mathrm{sign}(z)` with
:math:`\mathrm{sign}(0) = 1` (zennit's stabilizer). The rule set is built per
call, from what that call's forward pass recorded (:func:`lrp_recording`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
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
from .affine import Affine
from .excitation_rules import MEANS, NORMALISATIONS, PASS_THROUGH, POOLS, pooled
from .graph import ForwardTrace
from .owners import ModuleCall, node_owners

Memo = Callable[[str, Callable[[], Tensor]], Tensor]
"""``memo(key, compute)``: ``compute()`` once per layer call and key (shared by the passes of ``K`` targets)."""

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEARS = (nn.Linear,)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BatchNorm = nn.modules.batchnorm._BatchNorm

_CONVOLUTION_NODES = frozenset({"ConvolutionBackward0"})
_PRODUCT_NODES = frozenset({"AddmmBackward0", "MmBackward0"})
LINEAR_NODES = _CONVOLUTION_NODES | _PRODUCT_NODES
# Element-wise activations: relevance passes through them unchanged.
_ACTIVATIONS = frozenset(UNSUPPORTED_ACTIVATIONS) | {
    "SigmoidBackward0",
    "TanhBackward0",
    "LeakyReluBackward1",
    "EluBackward1",
    "CeluBackward1",
}
_SUMS = frozenset({"AddBackward0"})
# Nodes whose output is non-negative where their (single) input is: reshapes, copies, max and average pooling.
_SIGN_KEEPING = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "CloneBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
    }
) | (POOLS | MEANS)


def stabilize(z: Tensor, eps: float) -> Tensor:
    r""":math:`z + \epsilon\,\mathrm{sign}(z)`, with :math:`\mathrm{sign}(0) = 1`: a denominator away from 0."""
    return torch.where(z >= 0, z + eps, z - eps)


def check_eps(value: float, name: str) -> float:
    """``value`` as a float, if it is finite and non-negative; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite non-negative float, got {value!r}")
    return float(value)


class LayerRule(ABC):
    """How a linear or convolution layer passes relevance to its input: one LRP rule.

    Subclasses implement :meth:`relevance`. A rule holds only its
    hyper-parameters; one instance may serve many layers, calls and threads.

    Args:
        zero_bias: compute as if the layer had no bias (zennit's ``zero_params=["bias"]``).
    """

    def __init__(self, *, zero_bias: bool = False) -> None:
        if not isinstance(zero_bias, bool):
            raise TypeError(f"zero_bias must be a bool, got {type(zero_bias).__name__}")
        self.zero_bias = zero_bias

    @abstractmethod
    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        """The relevance ``(R, *x.shape[1:])`` of the input ``x`` given the relevance ``r`` of the output.

        What depends on the forward pass alone (denominators) goes through
        ``memo``, so that ``K`` targets compute it once.
        """

    def bias(self, layer: Affine) -> Tensor | None:
        """The bias the rule computes with (None under ``zero_bias``)."""
        return None if self.zero_bias else layer.bias

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True)
class LrpRecord:
    """What one forward pass recorded for LRP: operands of sums and means, and the module of each layer node."""

    trace: ForwardTrace
    owners: dict[Node, ModuleCall]


@contextmanager
def lrp_recording(model: nn.Module) -> Iterator[LrpRecord]:
    """Run the forward pass in this block to record what :class:`LrpRules` needs.

    Watches every linear, convolution and BatchNorm module of ``model`` (by
    thread-filtered hooks removed on exit) and records the operands of sums
    and means (:class:`~attrib.core.graph.ForwardTrace`).
    """
    watched: dict[nn.Module, tuple[str, frozenset[str]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, CONVOLUTIONS):
            watched[module] = (name, _CONVOLUTION_NODES)
        elif isinstance(module, LINEARS):
            watched[module] = (name, _PRODUCT_NODES)
        elif isinstance(module, BATCH_NORMS):
            watched[module] = (name, NORMALISATIONS)
    with node_owners(watched) as owners, ForwardTrace(_SUMS | MEANS) as trace:
        yield LrpRecord(trace, owners)


class LrpRules(BackwardRule):
    """The LRP rule set of one call (see the module docstring).

    Args:
        record: what the call's forward pass recorded (:func:`lrp_recording`).
        rules: the layer rule of each linear or convolution module (a composite's assignment).
        stabilizer: the :math:`\\epsilon` of the sum and pooling rules.
        root: the tensor relevance starts from (the BatchNorm folds are found below it).
        keep: keep what the rules compute from the forward pass alone (denominators) between
            passes: for ``K > 1`` targets, at the cost of one tensor per layer.
    """

    name = "LRP"
    recorded = _SUMS | MEANS

    def __init__(
        self,
        record: LrpRecord,
        rules: Mapping[nn.Module, LayerRule],
        stabilizer: float,
        root: Tensor,
        keep: bool = False,
    ) -> None:
        self.record = record
        self.rules = rules
        self.stabilizer = stabilizer
        self.folds = _batch_norm_folds(root, record.owners)
        self.keep = keep
        self._memo: dict[tuple[Node, str], Tensor] = {}

    def rule_for(self, node: Node) -> NodeRule | None:
        name = node.name()
        if name in LINEAR_NODES:
            return self._layer_rule(node)
        if name in PASS_THROUGH:
            return None
        if is_rectifier(node) or name in _ACTIVATIONS or name in NORMALISATIONS:
            return _pass_first
        if name in POOLS or name in MEANS:
            return self._pool
        if name in _SUMS:
            return self._sum
        raise UnsupportedModelError(
            f"LRP has no rule for {name}, which lies between the target and the inputs; it is defined for "
            "linear and convolution modules, BatchNorm, element-wise activations, average and max pooling, "
            "sums and reshaping operations (a plain gradient there would silently break the relevance). "
            "Explain a model built from those"
        )

    def _memoised(self, node: Node, key: str, compute: Callable[[], Tensor]) -> Tensor:
        if not self.keep:
            return compute()
        value = self._memo.get((node, key))
        if value is None:
            value = self._memo[node, key] = compute()
        return value

    def _layer_rule(self, node: Node) -> NodeRule:
        call = self.record.owners.get(node)
        if call is None:
            raise UnsupportedModelError(
                f"LRP found a {node.name()} that no nn.Linear / nn.Conv / nn.ConvTranspose module produced "
                "(a functional F.linear, F.conv2d or matmul); LRP assigns its rules per module, so wrap the "
                "operation in such a module"
            )
        rule = self.rules.get(call.module)
        if rule is None:
            raise UnsupportedModelError(
                f"LRP has no rule for module {call.name!r} ({type(call.module).__name__}): the composite assigns "
                "none to it; add its type (layer_map) or name (name_map) to the composite"
            )
        fold = self.folds.get(node)
        conv = node.name() in _CONVOLUTION_NODES
        edge = 0 if conv or node.name() == "MmBackward0" else 1  # addmm(bias, x, W^T): x is the second operand
        nonnegative = _rectified(node.next_functions[edge][0])

        def memo(key: str, compute: Callable[[], Tensor]) -> Tensor:
            return self._memoised(node, key, compute)

        def apply(node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
            (r,) = grads
            assert r is not None
            if conv:
                layer = Affine.of_convolution(node, call.module)
                x = getattr(node, "_saved_input")  # noqa: B009
            else:
                layer = Affine.of_linear(call.module)
                x = call.checked_input()
                x = x.reshape(-1, x.shape[-1])
            if fold is not None:
                layer = layer.folded(fold)
            if nonnegative:
                layer = replace(layer, nonnegative_input=True)
            out: list[Tensor | None] = [None] * len(node.next_functions)
            out[edge] = rule.relevance(layer, x, r, memo)
            return tuple(out)

        return apply

    def _pool(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        assert r is not None
        name = node.name()
        if name in MEANS:
            sizes = tuple(getattr(node, "_saved_self_sym_sizes"))  # noqa: B009
            matching = [t for t in self.record.trace.operands(node) if tuple(t.shape) == sizes]
            if not matching:
                raise UnsupportedModelError(f"the input of {name} was not recorded in the forward pass")
            x = matching[0]
        else:
            x = getattr(node, "_saved_self")  # noqa: B009
        z = self._memoised(node, "z", lambda: stabilize(pooled(name, node, x, r), self.stabilizer))
        (g,) = plain_backward(node, (r / z,))
        assert g is not None
        return (g * x,)

    def _sum(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        assert r is not None
        on_path = [child is not None for child, _ in node.next_functions]
        if not all(on_path):  # a constant operand (a bias) takes no share
            return tuple(r if flag else None for flag in on_path)
        a, b = self.record.trace.operands(node)
        alpha = getattr(node, "_saved_alpha")  # noqa: B009
        term_b = b if alpha == 1 else b * alpha
        z = self._memoised(node, "z", lambda: stabilize(a + term_b, self.stabilizer))
        s = r / z
        return (a * s, term_b * s)


def _pass_first(node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
    """Relevance passes to the first operand unchanged (activations, BatchNorm)."""
    return (grads[0],) + (None,) * (len(node.next_functions) - 1)


def _rectified(node: Node | None) -> bool:
    """Whether the tensor ``node`` produced is a ReLU's output, maybe pooled or reshaped (so non-negative)."""
    for _ in range(8):
        if node is None:
            return False
        if node.name() in ("ReluBackward0", "ReluBackward1") or (
            node.name() != "ThresholdBackward0" and is_rectifier(node)
        ):
            return True  # (a threshold's replacement value is not saved: it may be negative)
        if node.name() not in _SIGN_KEEPING:
            return False
        node = node.next_functions[0][0]
    return False


def _batch_norm_folds(root: Tensor, owners: Mapping[Node, ModuleCall]) -> dict[Node, BatchNorm]:
    """The layer nodes below ``root`` whose output only an eval-mode BatchNorm module reads: node -> BatchNorm.

    Raises:
        UnsupportedModelError: such a BatchNorm normalises with batch statistics (training mode, or no
            running statistics), which cannot be folded.
    """
    candidates: dict[Node, BatchNorm] = {}
    for node, call in owners.items():
        norm = call.module
        if not isinstance(norm, BATCH_NORMS):
            continue
        child = node.next_functions[0][0]
        producer = owners.get(child) if child is not None else None
        if producer is None or child is None or child.name() not in LINEAR_NODES:
            continue
        if norm.training or norm.running_mean is None or norm.running_var is None:
            raise UnsupportedModelError(
                f"LRP folds BatchNorm {call.name!r} into the layer before it with its running statistics, but it "
                "normalises with batch statistics (training mode or track_running_stats=False); explain the model "
                "in eval mode (eval_mode=True)"
            )
        out_features = (
            Affine.of_convolution(child, producer.module).out_features
            if child.name() in _CONVOLUTION_NODES
            else Affine.of_linear(producer.module).out_features
        )
        if norm.num_features == out_features:
            candidates[child] = norm
    if not candidates or root.grad_fn is None:
        return candidates
    consumers = _consumers(root.grad_fn)
    return {node: norm for node, norm in candidates.items() if consumers.get(node, 0) == 1}


def _consumers(root: Node) -> dict[Node, int]:
    """How many edges of the graph below ``root`` lead into each node."""
    counts: dict[Node, int] = {}
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            counts[child] = counts.get(child, 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return counts
