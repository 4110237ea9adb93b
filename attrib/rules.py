"""Backward rules: redefining how the signal passes back through each kind of autograd node.

A :class:`BackwardRule` is a rule *set*: for every autograd node on the path
from the target to the explained tensors it says how that node passes the
signal back, by the node's kind (``node.name()``, e.g. ``ConvolutionBackward0``):

* a :data:`NodeRule` (a function of the node, the signal arriving at its
  outputs and the call's :class:`~attrib.core.graph.ForwardTrace`) replaces
  the node's backward;
* ``None`` keeps the node's own (plain) backward;
* :class:`UnsupportedModelError` refuses a node the rule is not defined for,
  rather than returning a silently wrong mixture with plain gradients.

The rules act on the autograd graph of one forward pass, after that pass:
:mod:`attrib.core.graph` walks the graph from the target and carries the
signal back node by node, applying the rule set. The graph is built the same
whether an operation came from a module (``nn.ReLU``), a function
(``F.relu``, ``torch.relu``), a tensor method or an in-place form, so every
spelling is covered; nothing is patched, no parameter is touched, and the
rules are scoped to the call (other threads are unaffected).

Members of the scheme:

* :class:`GuidedReLU` (Guided backprop) and :class:`DeconvReLU` (DeconvNet):
  rules for the rectifier nodes, plain backward elsewhere, refusal of other
  activations (GELU, ReLU6, ...) between the inputs and the target. For a
  rectifier with input ``x``, upstream signal ``g`` and plain local gradient
  ``g * [x > 0]``::

      guided backprop:  g * [x > 0] * [g > 0]
      deconvnet:        g * [g > 0]

* :class:`attrib.core.excitation_rules.ExcitationRule` (excitation backprop):
  rules for linear, convolution, pooling, normalisation and sum nodes, a list
  of nodes whose plain backward already is the rule, refusal of anything else.

Every rule set refuses opaque compiled regions (``torch.compile``,
TorchScript's differentiable graphs, reentrant checkpointing): the rules
cannot see inside them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor
from torch.autograd.graph import Node

if TYPE_CHECKING:
    from .core.graph import ForwardTrace

Grads = tuple[Tensor | None, ...]

NodeRule = Callable[[Node, Grads, "ForwardTrace | None"], Grads]
"""``rule(node, grad_outputs, trace) -> grad_inputs``: one node's redefined backward.

``grad_outputs`` is the signal at the node's outputs (``None`` where none
arrives), ``grad_inputs`` one entry per ``node.next_functions`` edge.
"""


def plain_backward(node: Node, grads: Grads) -> Grads:
    """The node's own backward, one entry per ``next_functions`` edge."""
    call = node if callable(node) else getattr(node, "apply")  # noqa: B009  (a custom autograd.Function node)
    out = call(*grads)
    return out if isinstance(out, tuple) else (out,)


class UnsupportedModelError(TypeError):
    """The model uses an operation the requested backward rule is not defined for."""


# Nodes hiding a whole sub-graph the walk cannot see into.
_OPAQUE_MARKERS = ("CompiledFunction", "DifferentiableGraph", "CheckpointFunction")

# Autograd node names of rectifiers y = max(x, t): relu in every spelling, and threshold.
RECTIFIER_NODES = frozenset({"ReluBackward0", "ReluBackward1", "ThresholdBackward0", "ThresholdBackward1"})
# clamp(min=0) without an upper bound is a ReLU too.
_CLAMP_NODES = frozenset({"ClampMinBackward0", "ClampBackward1"})

# Activations no rule here defines, with their user-facing names.
UNSUPPORTED_ACTIVATIONS = {
    "HardtanhBackward0": "Hardtanh/ReLU6",
    "LeakyReluBackward0": "LeakyReLU",
    "EluBackward0": "ELU/SELU",
    "CeluBackward0": "CELU",
    "GeluBackward0": "GELU",
    "SiluBackward0": "SiLU",
    "MishBackward0": "Mish",
    "SoftplusBackward0": "Softplus",
    "HardswishBackward0": "Hardswish",
    "HardsigmoidBackward0": "Hardsigmoid",
    "PreluKernelBackward0": "PReLU",
    "PreluBackward0": "PReLU",
    "RreluWithNoiseBackward0": "RReLU",
    "GluBackward0": "GLU",
    "LogSigmoidBackward0": "LogSigmoid",
    "SoftshrinkBackward0": "Softshrink",
    "HardshrinkBackward0": "Hardshrink",
}


def is_rectifier(node: Node) -> bool:
    """Whether ``node`` is the backward of ``max(x, 0)`` in any spelling (relu, threshold, clamp(min=0))."""
    name = node.name()
    if name in RECTIFIER_NODES:
        return True
    if name in _CLAMP_NODES:
        low = getattr(node, "_saved_min", None)
        high = getattr(node, "_saved_max", None)
        return low is not None and float(low) == 0.0 and high is None
    return False


class BackwardRule(ABC):
    """A set of backward rules, one per kind of autograd node (see the module docstring).

    Subclasses implement :meth:`rule_for`. Rule sets hold no per-call state
    (a method shares one instance between calls and threads); what a call
    records during its forward pass lives in the call's ``ForwardTrace``.
    """

    #: Name used in error messages.
    name: str = "rule"

    #: Node kinds whose forward operands the rules need and the node does not save
    #: (recorded during the forward pass, see :func:`attrib.core.graph.recording`).
    recorded: frozenset[str] = frozenset()

    def node_rule(self, node: Node) -> NodeRule | None:
        """The rule for ``node`` (None: its plain backward); raises :class:`UnsupportedModelError`."""
        name = node.name()
        if any(marker in name for marker in _OPAQUE_MARKERS):
            raise UnsupportedModelError(
                f"{self.name} cannot see inside {name.rsplit('::', 1)[-1]}: the model runs a compiled or "
                "checkpointed region whose operations the rule cannot reach. Pass the eager module instead "
                "(for torch.compile, model._orig_mod; for TorchScript, the original nn.Module)"
            )
        return self.rule_for(node)

    @abstractmethod
    def rule_for(self, node: Node) -> NodeRule | None:
        """The rule for a node that is not an opaque region."""


class _RectifierRule(BackwardRule):
    """Redefines the rectifiers only; every other node keeps its plain backward; other activations are refused."""

    @abstractmethod
    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        """The signal passed to ``x`` given the plain one ``g * [x > 0]`` and ``g``."""

    def rule_for(self, node: Node) -> NodeRule | None:
        if is_rectifier(node):
            return self._rectify
        name = node.name()
        if name in UNSUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(
                f"{self.name} redefines the backward pass of ReLUs only, but the model applies "
                f"{UNSUPPORTED_ACTIVATIONS[name]} ({name}) between the inputs and the target; "
                "the result would silently mix the rule with plain gradients. Use a ReLU model or a "
                "plain gradient method (Saliency, IntegratedGradients)"
            )
        return None

    def _rectify(self, node: Node, grad_outputs: Grads, trace: ForwardTrace | None) -> Grads:
        (upstream,) = grad_outputs
        plain = plain_backward(node, grad_outputs)
        assert upstream is not None and plain[0] is not None
        return (self.rectifier(plain[0], upstream),) + tuple(plain[1:])


class GuidedReLU(_RectifierRule):
    """Guided backpropagation: pass only positive gradients through active units."""

    name = "guided backprop"

    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        return plain_grad_input.clamp(min=0)


class DeconvReLU(_RectifierRule):
    """DeconvNet: rectify the gradient itself, ignoring the forward activation."""

    name = "deconvnet"

    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output.clamp(min=0)
