"""Carrying a signal back through one autograd graph under a backward rule set.

:class:`GraphBackward` walks the graph that produced a tensor, keeps the
nodes that lead to the requested tensors, orders them so that every node runs
after all its consumers, and carries a seed signal back: each node passes on
the signal under the rule set's rule for its kind (:mod:`attrib.rules`), or
with its own backward where the rule set keeps it. The plan is made once per
graph and run for any number of seeds (``K`` targets cost ``K`` passes, no
further forward). Signals arriving at a node from several consumers are
summed; a signal of a broadcast operand is summed back to its shape, as the
autograd engine does.

Some rules need forward values that the graph does not keep (the operands of
a sum, the input of a mean or of a bias-less product): :func:`recording`
records them during the forward pass into a :class:`ForwardTrace`, keyed by
the node the operation produced, for the node kinds the rule set lists in
``recorded``.

The same trace also records the gradient hooks the model registers on its
tensors during the forward pass (``t.register_hook(fn)``): the autograd engine
runs them on the signal of ``t`` before passing it on, and so does the walk,
so a hook that scales, replaces or checks a gradient (or raises) acts as it
would in a plain backward pass. Module backward hooks
(``register_full_backward_hook``) live on graph nodes PyTorch does not expose
to Python; a graph holding them is refused with
:class:`~attrib.rules.UnsupportedModelError` rather than silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import Node
from torch.overrides import TorchFunctionMode

from ..rules import BackwardRule, Grads, NodeRule, UnsupportedModelError, plain_backward

Slot = tuple[Node, int]
"""Where the signal of a tensor arrives: its producing node and its output number."""

_ACCUMULATE = "torch::autograd::AccumulateGrad"
# In-place functions whose first operand must be copied before it is overwritten.
_INPLACE = frozenset({"add_", "__iadd__"})
# The node a module's full backward hooks (or pre-hooks) are attached to.
_MODULE_HOOK_NODE = "BackwardHookFunctionBackward"
_REGISTER_HOOK = Tensor.register_hook


class ForwardTrace(TorchFunctionMode):
    """Records the operands on the graph of the operations whose result comes from one of ``kinds`` of node.

    It also records, per slot, the tensors the model registers gradient hooks
    on (:meth:`hooked`). Active only inside :func:`recording` (a thread-local
    mode, not a patch).
    An operand later modified in place is detected when it is read back. The
    trace also memoises what rules derive from the forward pass alone (e.g.
    :math:`f(x, W^+)`), so that ``K`` targets compute it once.
    """

    def __init__(self, kinds: frozenset[str]) -> None:
        super().__init__()
        self.kinds = kinds
        self._operands: dict[Node, tuple[tuple[Tensor, int], ...]] = {}
        self._memo: dict[tuple[Node, str], Tensor] = {}
        self._hooked: dict[Slot, list[Tensor]] = {}

    def memo(self, node: Node, key: str, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``, once per node and key for this call (shared by the passes of ``K`` targets)."""
        value = self._memo.get((node, key))
        if value is None:
            value = self._memo[node, key] = compute()
        return value

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is _REGISTER_HOOK:
            handle = func(*args, **kwargs)
            tensor = args[0]
            if isinstance(tensor, Tensor) and tensor.requires_grad:
                tensors = self._hooked.setdefault(slot_of(tensor), [])
                if not any(t is tensor for t in tensors):  # its hook dict holds every hook registered on it
                    tensors.append(tensor)
            return handle
        if not self.kinds:  # only hooks to record
            return func(*args, **kwargs)
        operands = [a for a in args if isinstance(a, Tensor)]
        if not any(t.requires_grad for t in operands):  # not on a graph: nothing to record
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__radd__":
            operands.reverse()
        # Only operands on the graph are recorded; an in-place op's first operand is copied before it changes.
        record: list[tuple[Tensor, int]] = []
        for i, t in enumerate(operands):
            if t.requires_grad:
                kept = t.detach().clone() if i == 0 and name in _INPLACE else t.detach()
                record.append((kept, kept._version))  # a detached tensor shares the original's version counter
        existing = {t.grad_fn for t in operands if t.grad_fn is not None}
        out = func(*args, **kwargs)
        node = out.grad_fn if isinstance(out, Tensor) else None
        # An operation that hands back an operand unchanged (dropout in eval mode) made no node: the node is the
        # operand's own, and its operands were recorded when it was made.
        if node is not None and node not in existing and node.name() in self.kinds:
            self._operands[node] = tuple(record)
        return out

    def operands(self, node: Node) -> tuple[Tensor, ...]:
        """The recorded operands (those that required grad, detached) of the operation that produced ``node``."""
        record = self._operands.get(node)
        if record is None:
            raise UnsupportedModelError(
                f"the forward operands of {node.name()} were not recorded: the operation ran inside a composite "
                "function or outside attrib.core.graph.recording(), and the node does not keep them"
            )
        for tensor, version in record:
            if tensor._version != version:
                raise RuntimeError(
                    f"an operand of {node.name()} was modified in place after the operation; "
                    "use out-of-place operations on the explained path"
                )
        return tuple(tensor for tensor, _ in record)

    def hooked(self, slot: Slot) -> list[Tensor]:
        """The tensors whose signal arrives at ``slot`` and that got gradient hooks during the forward pass."""
        return self._hooked.get(slot, [])

    def run_hooks(self, slot: Slot, grad: Tensor) -> Tensor:
        """``grad`` passed through the slot's tensor hooks in registration order, as the autograd engine does.

        A hook returning None leaves the signal as it is; one returning a
        tensor replaces it (it must keep the signal's shape).
        """
        for tensor in self.hooked(slot):
            hooks = tensor._backward_hooks
            for hook in list(hooks.values()) if hooks else ():
                result = hook(grad)
                if result is None:
                    continue
                if not isinstance(result, Tensor) or result.shape != grad.shape:
                    got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
                    raise RuntimeError(
                        f"a gradient hook registered in the model's forward returned {got}; "
                        f"expected a Tensor of shape {tuple(grad.shape)} (or None)"
                    )
                grad = result
        return grad


@contextmanager
def recording(rule: BackwardRule | None) -> Iterator[ForwardTrace | None]:
    """Run the forward pass in this block to record what ``rule`` needs (None without a rule).

    With a rule the trace records at least the gradient hooks the forward
    pass registers, which :class:`GraphBackward` then runs.
    """
    if rule is None:
        yield None
        return
    with ForwardTrace(rule.recorded) as trace:
        yield trace


def slot_of(tensor: Tensor) -> Slot:
    """The slot where the signal of ``tensor`` arrives (its accumulator for a leaf)."""
    if tensor.grad_fn is not None:
        return tensor.grad_fn, tensor.output_nr
    if not tensor.requires_grad:
        raise ValueError("a tensor the signal is carried to must require grad")
    # A leaf's accumulator node is shared by every graph it joins; view_as reaches it without copying.
    view = tensor.view_as(tensor).grad_fn
    accumulator = view.next_functions[0][0] if view is not None else None
    assert accumulator is not None
    return accumulator, 0


def _slot_count(node: Node) -> int:
    return len(node._input_metadata)  # one slot per forward output


def _conform(grad: Tensor, node: Node, slot: int) -> Tensor:
    """Sum a broadcast signal back to the slot's shape and cast it to its dtype, as the engine does."""
    meta = node._input_metadata[slot]
    if tuple(grad.shape) != tuple(meta.shape):
        grad = grad.sum_to_size(meta.shape)
    if grad.dtype != meta.dtype:
        grad = grad.to(meta.dtype)
    return grad


class GraphBackward:
    """A rule-modified backward pass from ``root`` to ``targets``, planned once, run per seed.

    Args:
        root: the tensor the seed signal is given for (e.g. the model output).
        targets: tensors (leaves, or inner tensors as :data:`Slot`\\ s from
            :func:`slot_of`) whose signal is returned.
        rule: the rule set.
        trace: what the forward pass recorded for ``rule`` (:func:`recording`).

    Raises:
        UnsupportedModelError: a node between ``root`` and ``targets`` has no
            rule in ``rule`` (checked when planning, before any signal moves).
    """

    def __init__(
        self,
        root: Tensor,
        targets: Sequence[Tensor | Slot],
        rule: BackwardRule,
        trace: ForwardTrace | None = None,
    ) -> None:
        self.rule = rule
        self.trace = trace
        self.targets = [t if isinstance(t, tuple) else slot_of(t) for t in targets]
        self.root: Slot | None = (root.grad_fn, root.output_nr) if root.grad_fn is not None else None
        self.order: list[Node] = []
        self.rules: dict[Node, NodeRule | None] = {}
        self.expand: set[Node] = set()
        self.needed: set[Node] = set()
        if self.root is not None:
            self._plan(self.root[0])

    def _plan(self, root: Node) -> None:
        target_nodes = {node for node, _ in self.targets}
        # Iterative post-order walk: a node is needed if it holds a target or leads to a needed node.
        needed: dict[Node, bool] = {}
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                leads = any(child is not None and needed.get(child, False) for child, _ in node.next_functions)
                needed[node] = leads or node in target_nodes
                if leads:
                    self.expand.add(node)
                continue
            if node in needed:
                continue
            needed[node] = False  # visiting; revisits see it as settled
            stack.append((node, True))
            stack.extend((c, False) for c, _ in node.next_functions if c is not None and c not in needed)
        self.needed = {node for node, flag in needed.items() if flag}
        # Consumers before producers (Kahn's algorithm on the needed sub-graph).
        pending: dict[Node, int] = {}
        for node in self.expand:
            for child, _ in node.next_functions:
                if child is not None and needed.get(child, False):
                    pending[child] = pending.get(child, 0) + 1
        ready = [root] if needed.get(root, False) else []
        while ready:
            node = ready.pop()
            self.order.append(node)
            if node not in self.expand:
                continue
            if node.name() == _MODULE_HOOK_NODE:
                raise UnsupportedModelError(
                    f"{self.rule.name} cannot run module backward hooks (register_full_backward_hook or "
                    "register_full_backward_pre_hook) on the explained path: PyTorch keeps them on graph nodes "
                    "a rule-modified backward pass cannot reach. Remove those hooks while explaining (tensor "
                    "hooks, t.register_hook in forward, are supported)"
                )
            self.rules[node] = self.rule.node_rule(node)
            for child, _ in node.next_functions:
                if child is not None and child in pending:
                    pending[child] -= 1
                    if pending[child] == 0:
                        ready.append(child)

    def __call__(self, seed: Tensor, edits: Mapping[Slot, Callable[[Tensor], Tensor]] | None = None) -> list[Tensor]:
        """The signal at each target for ``seed`` at the root (zeros where none arrives).

        ``edits`` maps inner slots to functions applied to the signal there,
        once all of it has arrived (e.g. subtracting a contrast signal).
        """
        found: dict[Slot, Tensor] = {}
        if self.root is not None:
            node, nr = self.root
            buffers: dict[Node, list[Tensor | None]] = {node: [None] * _slot_count(node)}
            buffers[node][nr] = seed
            self._run(buffers, edits or {}, found)
        results = []
        for slot in self.targets:
            node, nr = slot
            if slot in found:
                results.append(found[slot])
            else:
                meta = node._input_metadata[nr]
                results.append(torch.zeros(meta.shape, dtype=meta.dtype, device=meta.device))
        return results

    def _run(
        self,
        buffers: dict[Node, list[Tensor | None]],
        edits: Mapping[Slot, Callable[[Tensor], Tensor]],
        found: dict[Slot, Tensor],
    ) -> None:
        targets = set(self.targets)
        for node in self.order:
            grads = buffers.pop(node, None)
            if grads is None:
                continue
            for nr, grad in enumerate(grads):
                if grad is None:
                    continue
                if self.trace is not None:  # the model's own gradient hooks act first, as in a plain backward
                    grads[nr] = grad = self.trace.run_hooks((node, nr), grad)
                if (node, nr) in edits:
                    grads[nr] = grad = edits[node, nr](grad)
                if (node, nr) in targets:
                    found[node, nr] = grad
            if node not in self.expand or all(g is None for g in grads):
                continue
            rule = self.rules[node]
            signal: Grads = tuple(grads)
            grad_inputs = rule(node, signal, self.trace) if rule is not None else plain_backward(node, signal)
            for (child, slot), grad in zip(node.next_functions, grad_inputs):
                if child is None or grad is None or child not in self.needed:
                    continue
                grad = _conform(grad, child, slot)
                buffer = buffers.setdefault(child, [None] * _slot_count(child))
                previous = buffer[slot]
                buffer[slot] = grad if previous is None else previous + grad
