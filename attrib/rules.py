"""Backward rules: redefining how gradients pass through the rectifiers.

Guided backpropagation and DeconvNet keep the forward pass and change the
backward pass of every ReLU. Rather than patching ``torch.relu`` (global, not
thread-safe, blind to ``Tensor.relu``) or hooking ``nn.ReLU`` modules (blind
to functional calls), attrib applies a rule to the autograd graph of one
forward pass: after the forward, :func:`apply_rule` walks the graph from the
score back to the inputs and hooks every rectifier node it finds. A ReLU
leaves the same node (``ReluBackward0``) whether it came from ``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu`` or an in-place form, so all are
covered; the hooks live on nodes of that one graph, so they are scoped to the
call and invisible to other threads. The walk also refuses graphs the rule
cannot handle: other activations (GELU, ReLU6, LeakyReLU, ...) and opaque
compiled regions (``torch.compile``, TorchScript, reentrant checkpointing),
where returning the plain gradient would be silently wrong.

For a rectifier with input ``x``, upstream gradient ``g`` and plain local
gradient ``g * [x > 0]`` the rules are::

    guided backprop:  g * [x > 0] * [g > 0]
    deconvnet:        g * [g > 0]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor
from torch.autograd.graph import Node
from torch.utils.hooks import RemovableHandle


class UnsupportedModelError(TypeError):
    """The model uses an operation the requested backward rule is not defined for."""


class BackwardRule(ABC):
    """How the backward pass of a rectifier ``y = max(x, 0)`` is redefined."""

    #: Name used in error messages.
    name: str = "rule"

    @abstractmethod
    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        """The gradient passed to ``x`` given the plain one ``g * [x > 0]`` and ``g``."""


class GuidedReLU(BackwardRule):
    """Guided backpropagation: pass only positive gradients through active units."""

    name = "guided backprop"

    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        return plain_grad_input.clamp(min=0)


class DeconvReLU(BackwardRule):
    """DeconvNet: rectify the gradient itself, ignoring the forward activation."""

    name = "deconvnet"

    def rectifier(self, plain_grad_input: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output.clamp(min=0)


# Autograd node names of rectifiers y = max(x, t): relu in every spelling, and threshold.
_RECTIFIER_NODES = frozenset({"ReluBackward0", "ReluBackward1", "ThresholdBackward0", "ThresholdBackward1"})
# clamp(min=0) without an upper bound is a ReLU too.
_CLAMP_NODES = frozenset({"ClampMinBackward0", "ClampBackward1"})
# Activations whose backward the rules do not define.
_UNSUPPORTED_ACTIVATIONS = {
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
# Nodes hiding a whole sub-graph the walk cannot see into.
_OPAQUE_MARKERS = ("CompiledFunction", "DifferentiableGraph", "CheckpointFunction")


def _is_relu_clamp(node: object) -> bool:
    low = getattr(node, "_saved_min", None)
    high = getattr(node, "_saved_max", None)
    return low is not None and float(low) == 0.0 and high is None


def _rule_hook(rule: BackwardRule):  # type: ignore[no-untyped-def]
    def hook(grad_inputs: tuple[Tensor | None, ...], grad_outputs: tuple[Tensor | None, ...]):  # type: ignore[no-untyped-def]
        plain, upstream = grad_inputs[0], grad_outputs[0]
        if plain is None or upstream is None:
            return None
        return (rule.rectifier(plain, upstream),) + tuple(grad_inputs[1:])

    return hook


def apply_rule(output: Tensor, rule: BackwardRule) -> list[RemovableHandle]:
    """Hook ``rule`` onto every rectifier in the graph that produced ``output``.

    Returns the hook handles (remove them when done; :func:`rule_applied`
    does). Raises :class:`UnsupportedModelError` if the graph holds an
    activation or an opaque region the rule cannot handle.
    """
    handles: list[RemovableHandle] = []
    if output.grad_fn is None:
        return handles
    hook = _rule_hook(rule)
    seen: set[Node] = set()
    stack: list[Node | None] = [output.grad_fn]
    try:
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            name = node.name()
            if name in _RECTIFIER_NODES or (name in _CLAMP_NODES and _is_relu_clamp(node)):
                handles.append(node.register_hook(hook))
            elif name in _UNSUPPORTED_ACTIVATIONS:
                raise UnsupportedModelError(
                    f"{rule.name} redefines the backward pass of ReLUs only, but the model applies "
                    f"{_UNSUPPORTED_ACTIVATIONS[name]} ({name}) between the inputs and the target; "
                    "the result would silently mix the rule with plain gradients. Use a ReLU model or a "
                    "plain gradient method (Saliency, IntegratedGradients)"
                )
            elif any(marker in name for marker in _OPAQUE_MARKERS):
                raise UnsupportedModelError(
                    f"{rule.name} cannot see inside {name.rsplit('::', 1)[-1]}: the model runs a compiled or "
                    "checkpointed region whose ReLUs the rule cannot reach. Pass the eager module instead "
                    "(for torch.compile, model._orig_mod; for TorchScript, the original nn.Module)"
                )
            stack.extend(next_node for next_node, _ in node.next_functions)
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


@contextmanager
def rule_applied(output: Tensor, rule: BackwardRule | None) -> Iterator[None]:
    """Apply ``rule`` (if any) to ``output``'s graph for the duration of the block."""
    handles = apply_rule(output, rule) if rule is not None else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
