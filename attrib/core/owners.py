"""Which module produced which autograd node, recorded during one forward pass.

Rules that are assigned per *module* (LRP's composites) act on autograd
nodes; :func:`node_owners` links the two. While the block runs, a forward
pre-hook and a forward hook on each watched module note the module's input
and, from its output, the node of the wanted kind that the module's call
created (a convolution's ``ConvolutionBackward0``, a linear layer's
``AddmmBackward0`` behind the views of a batched input, ...). The hooks act
only on the thread that opened the block (other threads may run the same
model) and are removed on exit, whether the block returns or raises; the
model is never modified.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import Node

# Nodes a module may put between its main operation and its output (the views around a batched linear layer).
_WRAPPERS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0"})


@dataclass(frozen=True)
class ModuleCall:
    """One call of a watched module: the module, its name in the model and its (first) input."""

    module: nn.Module
    name: str
    input: Tensor
    version: int

    def checked_input(self) -> Tensor:
        """The input as it was during the call.

        Raises:
            RuntimeError: it was modified in place afterwards.
        """
        if self.input._version != self.version:
            raise RuntimeError(
                f"the input of module {self.name!r} was modified in place after the module ran; "
                "use out-of-place operations there"
            )
        return self.input


@contextmanager
def node_owners(watched: Mapping[nn.Module, tuple[str, frozenset[str]]]) -> Iterator[dict[Node, ModuleCall]]:
    """Record, for each call of a watched module in this block, the node of its kinds it produced.

    ``watched`` maps a module to its name and the node kinds
    (``node.name()``) its main operation produces. The yielded dict is
    filled as the forward pass runs: node -> :class:`ModuleCall`. A call
    whose output does not require grad (or is no Tensor) is not recorded.
    """
    owners: dict[Node, ModuleCall] = {}
    pending: dict[nn.Module, list[Any]] = {}
    thread = threading.get_ident()

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == thread:
            first = args[0] if args and isinstance(args[0], Tensor) else None
            pending.setdefault(module, []).append(first)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if threading.get_ident() != thread:
            return
        stack = pending.get(module)
        x = stack.pop() if stack else None
        if x is None or not isinstance(output, Tensor) or output.grad_fn is None:
            return
        name, kinds = watched[module]
        node = _main_node(output.grad_fn, kinds)
        if node is not None:
            kept = x.detach()
            owners[node] = ModuleCall(module, name, kept, kept._version)

    handles = []
    try:
        for module in watched:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        yield owners
    finally:
        for handle in handles:
            handle.remove()


def _main_node(node: Node, kinds: frozenset[str]) -> Node | None:
    """``node`` if it is of ``kinds``, else the first such node behind a chain of reshaping views."""
    for _ in range(4):
        name = node.name()
        if name in kinds:
            return node
        if name not in _WRAPPERS:
            return None
        children = [child for child, _ in node.next_functions if child is not None]
        if len(children) != 1:
            return None
        node = children[0]
    return None
