r"""AttnLRP (Achtibat et al., ICML 2024) as a backward-rule set: LRP through attention, softmax and normalisation.

The rules extend :class:`attrib.core.lrp_nodes.LrpRules` (linear and
convolution modules get their composite's rule, activations pass relevance
on, pooling is shared in proportion) with the rules of the paper for the
operations a transformer adds. Relevance :math:`R` is carried explicitly;
:math:`\mathrm{stab}(z) = z + \epsilon\,\mathrm{sign}(z)`:

* **softmax** :math:`s = \mathrm{softmax}(x)` (Prop. 3.1, a Taylor
  decomposition at :math:`x` whose bias absorbs the rest):
  :math:`R_x = x \odot (R - s \textstyle\sum R)` along the softmax dimension
  (masked logits, :math:`-\infty`, count as 0);
* **bilinear products** :math:`z = a b` of two tensors on the path (the
  attention :math:`QK^T` and :math:`AV` matmuls, Prop. 3.3: epsilon then
  uniform): :math:`R_a = \tfrac12 a \odot (R / \mathrm{stab}(z)) b^T`,
  :math:`R_b = \tfrac12 b \odot a^T (R / \mathrm{stab}(z))`;
* **element-wise products** of two tensors on the path (gates, Prop. 3.2,
  the uniform rule): :math:`R_a = R_b = R / 2`; a product with (or a
  division by) a constant passes :math:`R` on unchanged;
* **layer norm** :math:`y = w \odot (x - \mu)/\sigma + b` (Prop. 3.4: the
  identity rule on :math:`1/\sigma`, the rest linear): the epsilon rule on
  the linear map with :math:`\sigma` held constant,
  :math:`R_x = x \odot C(w \odot R / (\sigma\,\mathrm{stab}(y)))`, with
  :math:`C h = h - \mathrm{mean}(h)` the centring (the bias :math:`b` absorbs
  its share); RMS norms (modules named ``*RMSNorm``) pass :math:`R` unchanged;
* **element-wise activations** (GELU, SiLU, tanh, ..., also those written as
  several operations, e.g. GPT-2's ``NewGELUActivation``): the identity rule,
  :math:`R_x = R_y`. A module whose class is an activation (``torch.nn``
  activations, classes named ``*Activation``, ``*RMSNorm``) is taken as one
  unit: its output's relevance goes to its input along one path through its
  operations (:func:`unit_routes`);
* **sums** :math:`z = a + \alpha b` (residual connections): the epsilon
  rule, :math:`R_a = a \odot R / \mathrm{stab}(z)`,
  :math:`R_b = \alpha b \odot R / \mathrm{stab}(z)`; a constant term
  (position embeddings, attention masks, a bias outside a module) is a bias
  and absorbs its share;
* **linear layers**: the composite's rule (the paper: epsilon) for
  ``nn.Linear``/``nn.Conv*``; a matrix product with a constant that no such
  module produced (transformers' ``Conv1D`` in GPT-2, ``F.linear``) gets the
  epsilon rule :math:`R_x = x \odot J^T (R / \mathrm{stab}(z))` with the
  bias in :math:`z`;
* fused attention (``scaled_dot_product_attention``, flash attention) is
  refused with :class:`attrib.UnsupportedModelError`: its probabilities are
  never formed.

Conservation: every rule but the softmax's passes on what it receives, up
to what biases (module biases, constant summands, layer-norm shifts) and
:math:`\epsilon` absorb; the softmax rule keeps
:math:`\sum_i x_i R_i - (\sum_i x_i s_i) \sum_j R_j` of :math:`\sum_j R_j`,
the rest going to its bias.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

from ..rules import Grads, NodeRule, UnsupportedModelError, plain_backward
from .excitation_rules import MEANS, NORMALISATIONS
from .graph import ForwardTrace, Slot, slot_of
from .lrp_nodes import BATCH_NORMS, CONVOLUTIONS, LINEAR_NODES, LINEARS, LayerRule, LrpRecord, LrpRules, stabilize
from .owners import node_owners

_SOFTMAX = "SoftmaxBackward0"
_LAYER_NORM = "NativeLayerNormBackward0"
_MATMULS = frozenset({"BmmBackward0", "MmBackward0", "AddmmBackward0"})
_SUMS = frozenset({"AddBackward0", "SubBackward0"})
# Operations whose relevance passes to their one operand on the path unchanged (scaling by a number, negation).
_PASS = frozenset({"MulBackward1", "DivBackward1", "NegBackward0"})
# Operations whose plain backward moves relevance without changing it.
_MOVE = frozenset({"ExpandBackward0", "SubBackward1"})
# Calls whose operands (all of them, constants included) the rules read.
_REDUCTIONS = frozenset({"SumBackward0", "SumBackward1"})
_RECORDED = frozenset({_SOFTMAX, "AddmmBackward0", "MmBackward0"}) | _SUMS | MEANS | _REDUCTIONS
# Views that torch.matmul puts around the bmm/mm it reduces to.
_MATMUL_VIEWS = frozenset({"UnsafeViewBackward0", "ViewBackward0", "ReshapeAliasBackward0", "ExpandBackward0"})
_FUSED_MARKERS = ("ScaledDotProduct", "FlashAttention", "EfficientAttention", "CudnnAttention")
# torch.nn activation classes that act element-wise (the softmax family and attention are not among them).
_NN_ACTIVATIONS = tuple(
    getattr(nn, name)
    for name in (
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
        "Sigmoid", "Tanh", "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid", "LogSigmoid",
        "Tanhshrink", "Softshrink", "Hardshrink",
    )
    if hasattr(nn, name)
)  # fmt: skip
# Units are small: a longer walk means the module is not an element-wise function of its input.
_UNIT_NODES = 64


def is_unit(module: nn.Module) -> bool:
    """Whether AttnLRP passes relevance through ``module`` whole (element-wise activations, RMS norms)."""
    name = type(module).__name__
    return isinstance(module, _NN_ACTIVATIONS) or name.endswith("Activation") or name.endswith("RMSNorm")


class CallTrace(ForwardTrace):
    """A :class:`~attrib.core.graph.ForwardTrace` that also keeps every argument of the calls of ``full`` kinds.

    ``call(node)`` gives the function and its arguments (tensors detached,
    an in-place call's first operand copied first), so a rule can read
    constant operands (a bias, a mask, position embeddings) and recompute
    the operation's output.
    """

    def __init__(self, kinds: frozenset[str], full: frozenset[str]) -> None:
        super().__init__(kinds)
        self.full = full
        self._calls: dict[Node, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = {}

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        kept: tuple[Any, ...] | None = None
        if any(isinstance(a, Tensor) and a.requires_grad for a in args):
            name = getattr(func, "__name__", "")
            inplace = name.startswith("__i") or (name.endswith("_") and not name.startswith("__"))
            kept = tuple(
                (a.detach().clone() if i == 0 and inplace else a.detach()) if isinstance(a, Tensor) else a
                for i, a in enumerate(args)
            )
        out = super().__torch_function__(func, types, args, kwargs)
        node = out.grad_fn if isinstance(out, Tensor) else None
        if kept is None or node is None:
            return out
        if func in (torch.matmul, Tensor.matmul, Tensor.__matmul__) and node.name() in _MATMUL_VIEWS:
            node = _product_behind(node)  # torch.matmul of batched operands: the bmm/mm inside
        # A call handing back one of its operands (dropout in eval mode) did not produce the node: keep the first.
        if node is not None and (node.name() in self.full or node.name() == "BmmBackward0") and node not in self._calls:
            versions = tuple(a._version for a in kept if isinstance(a, Tensor))
            self._calls[node] = (func, kept, dict(kwargs or {}), versions)
        return out

    def call(self, node: Node) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
        """The recorded call that produced ``node`` (None if none was recorded).

        Raises:
            RuntimeError: one of its operands was modified in place afterwards.
        """
        record = self._calls.get(node)
        if record is None:
            return None
        func, args, kwargs, versions = record
        if tuple(a._version for a in args if isinstance(a, Tensor)) != versions:
            raise RuntimeError(
                f"an operand of {node.name()} was modified in place after the operation; "
                "use out-of-place operations on the explained path"
            )
        return func, args, kwargs


def _product_behind(node: Node) -> Node | None:
    """The ``BmmBackward0``/``MmBackward0`` node behind the views torch.matmul wraps it in (None if none)."""
    for _ in range(3):
        if node.name() in ("BmmBackward0", "MmBackward0"):
            return node
        children = [child for child, _ in node.next_functions if child is not None]
        if node.name() not in _MATMUL_VIEWS or len(children) != 1:
            return None
        node = children[0]
    return node if node.name() in ("BmmBackward0", "MmBackward0") else None


@dataclass(frozen=True)
class AttnLrpRecord:
    """What one forward pass recorded for AttnLRP: the LRP record and the element-wise units' slots."""

    lrp: LrpRecord
    trace: CallTrace
    units: list[tuple[Slot, Slot]]


@contextmanager
def attn_lrp_recording(model: nn.Module) -> Iterator[AttnLrpRecord]:
    """Run the forward pass in this block to record what :class:`AttnLrpRules` needs.

    Watches the linear, convolution and BatchNorm modules (which module made
    which node) and the element-wise units (:func:`is_unit`: their input and
    output slots) by thread-filtered hooks removed on exit, and records the
    operands of sums, softmaxes and matrix products (:class:`CallTrace`).
    """
    watched: dict[nn.Module, tuple[str, frozenset[str]]] = {}
    units: list[tuple[Slot, Slot]] = []
    unit_modules = []
    for name, module in model.named_modules():
        if isinstance(module, CONVOLUTIONS + LINEARS):
            watched[module] = (name, LINEAR_NODES)
        elif isinstance(module, BATCH_NORMS):
            watched[module] = (name, NORMALISATIONS)
        elif is_unit(module):
            unit_modules.append(module)
    thread = threading.get_ident()
    entered: dict[nn.Module, list[Slot | None]] = {}

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == thread:
            x = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
            entered.setdefault(module, []).append(slot_of(x) if x is not None and x.requires_grad else None)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if threading.get_ident() != thread:
            return
        stack = entered.get(module)
        source = stack.pop() if stack else None
        if source is None or not isinstance(output, Tensor) or output.grad_fn is None:
            return
        out = (output.grad_fn, output.output_nr)
        if out != source and output.shape == args[0].shape:
            units.append((out, source))

    handles = []
    try:
        for module in unit_modules:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        with node_owners(watched) as owners, CallTrace(_RECORDED, _RECORDED) as trace:
            yield AttnLrpRecord(LrpRecord(trace, owners), trace, units)
    finally:
        for handle in handles:
            handle.remove()


def unit_routes(units: Sequence[tuple[Slot, Slot]]) -> dict[Node, int]:
    """For each node inside an element-wise unit, the edge its relevance leaves by: one path from output to input.

    Relevance arriving at the unit's output follows the first edge leading to
    the input at every node, so all of it reaches the input once (the
    identity rule); the unit's other inner nodes get none.

    A unit whose inside does not lead back to its input in at most
    ``_UNIT_NODES`` nodes is left to the per-node rules.
    """
    routes: dict[Node, int] = {}
    for (out_node, _), source in units:
        leads: dict[Node, int | None] = {}
        try:
            if _route(out_node, source, leads, [_UNIT_NODES]) is None:
                continue
        except OverflowError:
            continue
        routes.update({node: edge for node, edge in leads.items() if edge is not None})
    return routes


def _route(node: Node, source: Slot, leads: dict[Node, int | None], budget: list[int]) -> int | None:
    """The first edge of ``node`` that leads to the slot ``source`` (None: none does), filling ``leads``."""
    if node in leads:
        return leads[node]
    budget[0] -= 1
    if budget[0] < 0:
        raise OverflowError
    leads[node] = None
    in_node, in_nr = source
    for i, (child, nr) in enumerate(node.next_functions):
        if child is None:
            continue
        # Every child is walked, so that the whole inside gets a route (only the first edge carries relevance).
        found = (child is in_node and nr == in_nr) or (
            child is not in_node and _route(child, source, leads, budget) is not None
        )
        if found and leads[node] is None:
            leads[node] = i
    return leads[node]


class AttnLrpRules(LrpRules):
    """The AttnLRP rule set of one call (see the module docstring).

    Args:
        record: what the call's forward pass recorded (:func:`attn_lrp_recording`).
        rules: the layer rule of each linear or convolution module (a composite's assignment).
        stabilizer: the :math:`\\epsilon` of the sum, product and functional linear rules.
        root: the tensor relevance starts from.
        keep: keep what the rules compute from the forward pass alone between passes (``K > 1`` targets).
    """

    name = "AttnLRP"
    recorded = _RECORDED

    def __init__(
        self,
        record: AttnLrpRecord,
        rules: Mapping[nn.Module, LayerRule],
        stabilizer: float,
        root: Tensor,
        keep: bool = False,
    ) -> None:
        super().__init__(record.lrp, rules, stabilizer, root, keep)
        self.calls = record.trace
        self.routes = unit_routes(record.units)

    def rule_for(self, node: Node) -> NodeRule | None:
        if node in self.routes:
            return self._route
        name = node.name()
        if any(marker in name for marker in _FUSED_MARKERS):
            raise UnsupportedModelError(
                f"AttnLRP cannot decompose fused attention ({name}): the attention probabilities are never formed. "
                "Load HuggingFace models with attn_implementation='eager' (or set model.config._attn_implementation "
                "= 'eager'); nn.MultiheadAttention is recomputed step by step by attrib.AttnLRP itself"
            )
        if name in LINEAR_NODES and node in self.record.owners:
            return super().rule_for(node)
        if name == _SOFTMAX:
            return self._softmax
        if name == _LAYER_NORM:
            return self._layer_norm
        if name in _MATMULS:
            return self._matmul
        if name == "MulBackward0":
            return self._product
        if name == "DivBackward0":
            return self._quotient
        if name in _SUMS:
            return self._sum
        if name in _REDUCTIONS:
            return self._reduction
        if name in _PASS:
            return _pass_on
        if name in _MOVE:
            return None
        return super().rule_for(node)

    def _route(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        signal = [g for g in grads if g is not None]
        out: list[Tensor | None] = [None] * len(node.next_functions)
        out[self.routes[node]] = signal[0] if len(signal) == 1 else torch.stack(signal).sum(0)
        return tuple(out)

    def _softmax(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        assert r is not None
        s: Tensor = getattr(node, "_saved_result")  # noqa: B009
        dim = int(getattr(node, "_saved_dim"))  # noqa: B009
        dim = (dim - 2**64 if dim >= 2**63 else dim) % s.dim()  # saved as an unsigned int (-1 wraps around)
        call = self.calls.call(node)
        if call is None:
            raise UnsupportedModelError(f"the input of {node.name()} was not recorded in the forward pass")
        x = next(a for a in call[1] if isinstance(a, Tensor)).to(s.dtype)
        x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
        r = r.to(s.dtype)
        return (x * (r - s * r.sum(dim, keepdim=True)),)

    def _layer_norm(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        r = grads[0]
        assert r is not None

        def saved(name: str) -> Any:
            return getattr(node, f"_saved_{name}")

        x, mean, rstd = saved("input"), saved("result1"), saved("result2")
        weight, bias = saved("weight"), saved("bias")
        dims = tuple(range(-len(saved("normalized_shape")), 0))

        def scale() -> Tensor:
            y = (x - mean) * rstd
            if weight is not None:
                y = y * weight
            if bias is not None:
                y = y + bias
            factor: Tensor = rstd / stabilize(y, self.stabilizer)
            return factor * weight if weight is not None else factor

        h = r * self._memoised(node, "scale", scale)
        return (x * (h - h.mean(dims, keepdim=True)),) + (None,) * (len(node.next_functions) - 1)

    def _operands(self, node: Node) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """A matmul node's two factors as the node saw them (None where not known) and its constant term."""
        name = node.name()
        a = getattr(node, "_saved_mat1" if name == "AddmmBackward0" else "_saved_self", None)
        b = getattr(node, "_saved_mat2", None)
        bias = None
        call = self.calls.call(node)
        if call is not None:
            func, args, kwargs = call
            tensors = [t for t in args if isinstance(t, Tensor)]
            if func is torch.nn.functional.linear:  # F.linear(x, W, b): x W^T + b
                a, b = tensors[0], tensors[1].t()
                bias = tensors[2] if len(tensors) > 2 else kwargs.get("bias")
            elif name == "AddmmBackward0":  # addmm(bias, mat1, mat2)
                bias, a, b = tensors[0], tensors[1], tensors[2]
            elif len(tensors) >= 2:  # mm, bmm, or torch.matmul reduced to them: the factors in the node's shapes
                a, b = _as_factor(tensors[0], node, 0), _as_factor(tensors[1], node, 1)
        return a, b, bias

    def _matmul(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        assert r is not None
        addmm = node.name() == "AddmmBackward0"
        first = 1 if addmm else 0
        edges = node.next_functions
        on_path = [edges[first][0] is not None, edges[first + 1][0] is not None]
        a, b, bias = self._operands(node)
        if a is None or b is None:
            raise UnsupportedModelError(
                f"AttnLRP could not read the operands of {node.name()} (a matrix product of a tensor on the path "
                "with a constant, behind a reshape); compute it with an nn.Linear module or on 2-D operands"
            )

        def output() -> Tensor:
            z = a @ b
            if addmm:
                beta, alpha = getattr(node, "_saved_beta"), getattr(node, "_saved_alpha")  # noqa: B009
                z = alpha * z
                if bias is not None:
                    z = z + beta * bias
            return stabilize(z, self.stabilizer)

        s = r / self._memoised(node, "z", output)
        share = 0.5 if all(on_path) else 1.0
        out: list[Tensor | None] = [None] * len(edges)
        if on_path[0]:
            out[first] = a * (s @ b.transpose(-1, -2)) * share
        if on_path[1]:
            out[first + 1] = b * (a.transpose(-1, -2) @ s) * share
        return tuple(out)

    def _reduction(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        """A sum over dimensions, z = sum x: the epsilon rule, R_x = x R / stab(z) (broadcast back)."""
        (r,) = grads
        assert r is not None
        call = self.calls.call(node)
        if call is None:
            raise UnsupportedModelError(f"the input of {node.name()} was not recorded in the forward pass")
        func, args, kwargs = call
        x = args[0]

        def total() -> Tensor:
            with torch.no_grad():
                summed: Tensor = func(*args, **kwargs)
            return stabilize(summed, self.stabilizer)

        (spread,) = plain_backward(node, (r / self._memoised(node, "z", total),))
        assert spread is not None
        return (x * spread,)

    def _product(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        on_path = [child is not None for child, _ in node.next_functions]
        if all(on_path):
            return (r / 2, r / 2) if r is not None else (None, None)
        return tuple(r if flag else None for flag in on_path)

    def _quotient(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        if node.next_functions[1][0] is not None:
            raise UnsupportedModelError(
                "AttnLRP has no rule for a division by a tensor that depends on the input (DivBackward0), e.g. a "
                "hand-written normalisation; use nn.LayerNorm, or an RMS-norm module whose class name ends in 'RMSNorm'"
            )
        return (r, None)

    def _sum(self, node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
        (r,) = grads
        assert r is not None
        call = self.calls.call(node)
        on_path = [child is not None for child, _ in node.next_functions]
        if call is None or len(call[1]) < 2:
            return (
                super()._sum(node, grads, trace)
                if node.name() == "AddBackward0"
                else (r,) + (None,) * (len(on_path) - 1)
            )
        a, b = call[1][0], call[1][1]
        alpha = getattr(node, "_saved_alpha")  # noqa: B009
        if node.name() == "SubBackward0":
            alpha = -alpha
        if not isinstance(a, Tensor):
            a, b = b, a  # scalar + tensor
        assert isinstance(a, Tensor)
        term_b = b * alpha if alpha != 1 else b

        def total() -> Tensor:
            return stabilize(a + term_b, self.stabilizer)

        s = r / self._memoised(node, "z", total)
        shares = (a * s, term_b * s if isinstance(term_b, Tensor) else None)
        return tuple(share if flag else None for share, flag in zip(shares, on_path))


def _as_factor(t: Tensor, node: Node, which: int) -> Tensor | None:
    """A recorded matmul operand reshaped as the bmm/mm node saw it (None where broadcasting makes that unclear)."""
    if node.name() == "MmBackward0":
        return t.reshape(-1, t.shape[-1]) if which == 0 else (t if t.dim() == 2 else None)
    if t.dim() < 3:
        return None
    out_batch = node._input_metadata[0].shape[0]  # bmm's output (B, n, m)
    flat = t.reshape(-1, *t.shape[-2:])
    return flat if flat.shape[0] == out_batch else None


def _pass_on(node: Node, grads: Grads, trace: ForwardTrace | None) -> Grads:
    """Relevance to the one operand on the path, unchanged (scaling by a constant, negation)."""
    r = grads[0]
    return tuple(r if child is not None else None for child, _ in node.next_functions)
