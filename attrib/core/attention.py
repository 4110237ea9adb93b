r"""Reading a transformer's attention probabilities during its own forward pass, without patching it.

Attention-aware methods (rollout, the gradient-weighted relevance of Chefer
et al.) need each self-attention layer's probabilities
:math:`A_l = \mathrm{softmax}(Q_l K_l^T / \sqrt{d} + M)`, ``(N, H, L, L)``.
:class:`AttentionRecorder` is a thread-local ``TorchFunctionMode`` (a mode,
not a patch) that keeps the output of every ``softmax`` over the last
dimension of a ``(N, H, L, L)`` (or ``(N*H, L, L)``) tensor with square last
dimensions, in call order, which is layer order. This finds the attention of
models computing it explicitly ("eager" attention: HuggingFace's
``attn_implementation="eager"``, timm and most hand-written blocks).

Fused attention (``F.scaled_dot_product_attention``) never forms the
probabilities. For ``nn.MultiheadAttention`` (torchvision's ViT),
:func:`eager_multihead_attention` puts thread-filtered forward hooks on every
such module that replace its output by the same attention computed step by
step from the module's inputs and projection weights (equal to rounding), so
the recorder sees its softmax and gradients reach it; the hooks are removed
on exit. Other fused attention raises a ``ValueError`` naming the fix.

:func:`token_map` turns per-token scores into an ``(N, 1, h, w)`` patch map
for images, reading the grid as :mod:`attrib.core.tokens` reads ViT tokens
(leading class and distillation tokens dropped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .tokens import infer_layout

HEAD_FUSIONS = ("mean", "max", "min")


class AttentionRecorder(TorchFunctionMode):
    """Records the attention probabilities ``(n, H, L, L)`` of one forward pass over ``n`` rows.

    Args:
        n: the number of rows of the forward pass (a ``(n*H, L, L)`` softmax is read as ``(n, H, L, L)``).
        reduce: applied to each ``(n, H, L, L)`` map before it is kept (e.g. a head fusion,
            so that only ``(n, L, L)`` per layer is held); None keeps the maps as they are.
        differentiable: keep the maps on the autograd graph, as the model uses them (read them as
            ``(n, H, L, L)`` with :meth:`heads`, after taking gradients); a map that is on no graph
            (token ids in, parameters frozen) is replaced in the forward pass by an equal
            leaf that requires grad, so gradients w.r.t. every layer's map can be taken.
    """

    def __init__(self, n: int, reduce: Callable[[Tensor], Tensor] | None = None, *, differentiable: bool = False):
        super().__init__()
        self.n = n
        self.reduce = reduce
        self.differentiable = differentiable
        self.maps: list[Tensor] = []
        self.paused = 0  # > 0 while a module whose attention is recomputed runs its own (fused) forward

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if (
            self.paused
            or getattr(func, "__name__", "") != "softmax"
            or not isinstance(out, Tensor)
            or not self._is_attention(out)
        ):
            return out
        dim = kwargs.get("dim") if kwargs else None
        if dim is None and len(args) > 1:
            dim = args[1]
        if not isinstance(dim, int) or dim not in (-1, out.dim() - 1):
            return out
        if self.differentiable and torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        if self.differentiable:  # the very tensor the model goes on with: gradients are taken w.r.t. it
            self.maps.append(out)
            return out
        probs = self.heads(out.detach())
        self.maps.append(self.reduce(probs) if self.reduce is not None else probs)
        return out

    def heads(self, t: Tensor) -> Tensor:
        """A recorded map (or its gradient) as ``(n, H, L, L)``."""
        return t.view(self.n, -1, *t.shape[-2:])

    def _is_attention(self, t: Tensor) -> bool:
        if t.dim() not in (3, 4) or t.shape[-1] != t.shape[-2] or not t.is_floating_point():
            return False
        return t.shape[0] == self.n if t.dim() == 4 else t.shape[0] % self.n == 0


def fuse_heads(maps: Tensor, how: str) -> Tensor:
    """``(N, H, L, L)`` -> ``(N, L, L)``: the mean, max or min over heads."""
    if how == "mean":
        return maps.mean(1)
    if how == "max":
        return maps.amax(1)
    return maps.amin(1)


def check_head_fusion(value: object) -> str:
    """``value`` if it names a head fusion ("mean", "max", "min"), else a ValueError."""
    if value not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {value!r}")
    assert isinstance(value, str)
    return value


def no_attention_error(model: object) -> ValueError:
    """The error for a forward pass in which no attention probabilities were found."""
    return ValueError(
        f"no attention probabilities were found in the forward pass of {type(model).__name__}: the model computes "
        "attention with a fused kernel (F.scaled_dot_product_attention, flash attention) or has no self-attention. "
        "Load HuggingFace models with attn_implementation='eager' (or set model.config._attn_implementation = "
        "'eager'); nn.MultiheadAttention is recomputed step by step automatically"
    )


def explained_rows(token: int | Tensor, n: int, length: int, device: torch.device) -> Tensor:
    """The ``(n,)`` positions of the explained token: one int for all rows (negative: from the end) or one per row.

    Raises:
        ValueError: a position outside ``[-length, length)`` or a tensor of the wrong shape.
    """
    index = torch.as_tensor(token, device=device)
    if index.dim() == 0:
        index = index.expand(n)
    if index.shape != (n,) or index.dtype in (torch.bool,) or index.is_floating_point():
        raise ValueError(f"token must be an int or an (N,) integer tensor with N={n}, got {token!r}")
    if bool(((index < -length) | (index >= length)).any()):
        raise ValueError(f"token positions must lie in [-{length}, {length}) for sequences of length {length}")
    return index.long() % length


def check_token(token: object) -> int | Tensor:
    """``token`` if it is an int or an integer tensor, else a TypeError."""
    if isinstance(token, Tensor) and not token.is_floating_point() and token.dtype != torch.bool:
        return token
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    if isinstance(token, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in token):
        return torch.tensor(list(token), dtype=torch.long)
    raise TypeError(
        "token must be the explained token's position: an int (0: the class token; -1: the last token) or an "
        f"(N,) sequence or integer tensor of positions, got {type(token).__name__}"
    )


def token_map(scores: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Per-token scores ``(N, [K,] L)`` as an image map ``(N, [K,] 1, h, w)`` when the input is an image.

    For an input ``(N, C, H, W)`` the leading (class, distillation) tokens are
    dropped and the rest read as the patch grid with the image's aspect
    ratio, as :func:`attrib.core.tokens.infer_layout` reads ViT tokens (one
    leading token, or none, or two). Other inputs keep ``(N, [K,] L)``.

    Raises:
        ValueError: an image input whose token count forms no patch grid.
    """
    if len(input_shape) != 4:
        return scores
    lead = scores.shape[:-1]
    flat = scores.reshape(-1, scores.shape[-1], 1)
    error: ValueError | None = None
    for extra in (0, 1):  # DeiT has a class and a distillation token
        try:
            layout = infer_layout("attention", (flat.shape[0], flat.shape[1] - extra, 1), input_shape)
        except ValueError as err:
            error = err if error is None else error
            continue
        grid = layout.to_grid(flat[:, extra:])
        return grid.reshape(*lead, *grid.shape[1:])
    assert error is not None
    raise error


# nn.MultiheadAttention, step by step -------------------------------------------------------


def _projection(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # Flattened to 2-D so the product is one recorded addmm/mm node (see attrib.core.attn_lrp_nodes).
    out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _eager_mha(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Any]:
    """The output of ``module(query, key, value, ...)`` with its attention computed step by step."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights")
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    unknown = set(kwargs) - set(names)
    if unknown or kwargs.get("is_causal") or module.bias_k is not None or module.add_zero_attn:
        raise ValueError(
            "attention of nn.MultiheadAttention is recomputed step by step only without bias_k/bias_v, "
            f"add_zero_attn and is_causal (got {sorted(unknown) or 'one of those'}); use a model with eager attention"
        )
    query, key, value = bound["query"], bound["key"], bound["value"]
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    heads, width = module.num_heads, module.embed_dim
    if module._qkv_same_embed_dim:
        assert module.in_proj_weight is not None
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q = b_k = b_v = None
    if module.in_proj_bias is not None:
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)
    n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
    d = width // heads
    q = _projection(query, w_q, b_q).view(n, lq, heads, d).transpose(1, 2)
    k = _projection(key, w_k, b_k).view(n, lk, heads, d).transpose(1, 2)
    v = _projection(value, w_v, b_v).view(n, lk, heads, d).transpose(1, 2)
    logits = torch.matmul(q, k.transpose(-1, -2)) * (d**-0.5)
    mask = _additive_mask(bound.get("attn_mask"), bound.get("key_padding_mask"), n, heads, lq, lk, logits)
    if mask is not None:
        logits = logits + mask
    probs = torch.softmax(logits, dim=-1)
    mixed = torch.matmul(probs, v).transpose(1, 2).reshape(n, lq, width)
    out = _projection(mixed, module.out_proj.weight, module.out_proj.bias)
    if not module.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if bound.get("need_weights", True):
        weights = probs.mean(1) if bound.get("average_attn_weights", True) else probs
    return out, weights


def _additive_mask(
    attn_mask: Tensor | None, padding: Tensor | None, n: int, heads: int, lq: int, lk: int, like: Tensor
) -> Tensor | None:
    """nn.MultiheadAttention's masks as one additive ``(n, H, Lq, Lk)`` term (-inf where masked)."""
    total: Tensor | None = None
    for mask, shape in ((attn_mask, None), (padding, (n, 1, 1, lk))):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
        mask = mask.to(like.dtype)
        if shape is not None:
            mask = mask.reshape(shape)
        elif mask.dim() == 3:
            mask = mask.reshape(n, heads, lq, lk)
        total = mask if total is None else total + mask
    return total


@contextmanager
def eager_multihead_attention(model: nn.Module, recorder: AttentionRecorder | None = None) -> Iterator[None]:
    """Recompute every ``nn.MultiheadAttention`` of ``model`` step by step in this block (this thread only).

    A forward hook replaces each module's output by the same attention built
    from its inputs and weights (projections, ``softmax(QK^T/sqrt(d) + M)``,
    the mixing and the output projection), so the probabilities are ordinary
    tensors on the graph. The ``recorder`` ignores the module's own forward
    (whose softmax, with ``need_weights=True``, would be recorded twice).
    Hooks are removed on exit, whether the block returns or raises.
    """
    owner = threading.get_ident()

    # Another thread's forward on the same module may call these hooks while this block removes them, after
    # torch dropped their with_kwargs flag (it keeps hook and flag in two dicts): they then get no kwargs. Such
    # calls are never this thread's, so the hooks take any arguments and ignore them.
    def pre_hook(module: nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
        if threading.get_ident() == owner and recorder is not None:
            recorder.paused += 1

    def hook(module: nn.Module, args: tuple[Any, ...], *rest: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        kwargs: dict[str, Any] = rest[0] if len(rest) == 2 else {}
        if recorder is not None:
            recorder.paused -= 1
        assert isinstance(module, nn.MultiheadAttention)
        return _eager_mha(module, args, kwargs)

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
