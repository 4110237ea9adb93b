r"""AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance propagation through transformers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import Attribution
from ..core.attention import eager_multihead_attention
from ..core.attn_lrp_nodes import AttnLrpRules, attn_lrp_recording
from ..core.backprop import rooted_seeds
from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import run_model
from ..core.graph import GraphBackward, Slot
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.layers import resolve_layer
from ..core.lrp_nodes import CONVOLUTIONS, LINEARS, check_eps
from ..gradient_attribution import _leaf
from ..lrp.composites import Composite
from ..lrp.rules import Epsilon
from ..targets import Target, TargetLike, resolve_target


class AttnLRP(Attribution):
    r"""AttnLRP (Achtibat et al., ICML 2024): attention-aware layer-wise relevance propagation for transformers.

    The target's score is carried from the output down to the inputs, as in
    :class:`attrib.LRP`, with the paper's rules for what a transformer adds
    (:mod:`attrib.core.attn_lrp_nodes`): the softmax rule
    :math:`R_x = x \odot (R - s \sum R)`, the epsilon-and-uniform rule for the
    attention products :math:`QK^T` and :math:`AV` (half the relevance to each
    factor), the uniform rule for element-wise products of two input-dependent
    tensors, the identity rule for element-wise activations (GELU, SiLU, ...,
    also GPT-2's tanh GELU) and for the division by the standard deviation in
    layer norms (the rest of the layer norm, centring and affine map, gets the
    epsilon rule), and the epsilon rule for linear layers and sums. Constant
    summands (position embeddings, attention masks) and biases absorb their
    share. Nothing is patched: the rules act on the autograd graph of the
    call's own forward pass (:mod:`attrib.rules`).

    Where the relevance is read:

    * token ids (integer inputs): at the output of the input-embedding
      module (``model.get_input_embeddings()`` of the model or of a
      sub-module, else the first ``nn.Embedding``; or ``layer=``), summed over
      the hidden dimension: ``(N, L)``;
    * floating-point inputs (images): at the inputs, shaped as them
      (``(N, C, H, W)`` pixels, through the patch embedding's convolution);
      with ``layer=`` at that layer's output summed over its last dimension
      (``(N, T)`` for ViT tokens).

    ``(N, K)`` targets give ``(N, K, ...)``: one forward pass, ``K`` backward
    passes. ``batch_size`` rows run per forward pass; maps do not depend on it.

    Conservation: with zero biases and no softmax on the path the input
    relevance sums to the score up to :math:`\epsilon`. Otherwise the sum is
    the score less what biases, constant summands (position embeddings),
    layer-norm shifts and the softmax's bias term
    :math:`(\sum_i x_i s_i)\sum_j R_j` absorb, as in the paper.

    Attention must be computed explicitly: HuggingFace models with
    ``attn_implementation="eager"``; ``nn.MultiheadAttention`` (torchvision's
    ViT) is recomputed step by step from its inputs and weights during the
    call. Fused attention (``scaled_dot_product_attention``) raises
    :class:`attrib.UnsupportedModelError` naming the fix.

    Args:
        model: the ``nn.Module`` to explain (a HuggingFace model behind
            :class:`attrib.text.HFModel` for positional ``(ids, mask)`` calls).
        layer: where the relevance of token inputs is read (see above); a
            dotted name or a sub-module.
        composite: the rule of each ``nn.Linear``/``nn.Conv*`` module (an
            :class:`attrib.lrp.Composite`, e.g. ``Gamma`` for ViTs' linear
            layers); by default :class:`attrib.lrp.Epsilon` (``epsilon``) for all.
        epsilon: the :math:`\epsilon` of the default composite and of the
            sum, product and functional-linear rules.
        eval_mode: as for :class:`attrib.Attribution`.

    Example:
        >>> lrp = attrib.AttnLRP(HFModel(bert))
        >>> relevance = lrp.attribute(ids, target=1, additional_forward_args=(mask,))      # (N, L)
        >>> pixels = attrib.AttnLRP(vit).attribute(images, target=lambda out: out.logits[:, 3])  # (N, 3, H, W)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        composite: Composite | None = None,
        epsilon: float = 1e-6,
        eval_mode: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"AttnLRP reads the model's modules and autograd graph, so model must be an nn.Module, "
                f"got {type(model).__name__}"
            )
        super().__init__(model, eval_mode=eval_mode)
        self.epsilon = check_eps(epsilon, "epsilon")
        if composite is None:
            composite = Composite([(CONVOLUTIONS + LINEARS, Epsilon(self.epsilon))], stabilizer=self.epsilon)
        if not isinstance(composite, Composite):
            raise TypeError(
                f"composite must be an attrib.lrp.Composite (e.g. attrib.lrp.Composite([(nn.Linear, "
                f"attrib.lrp.Epsilon(1e-6))])), got {type(composite).__name__}"
            )
        self.composite = composite
        self._layer = resolve_layer(model, layer) if layer is not None else None

    def __repr__(self) -> str:
        layer = "" if self._layer is None else f", layer={self._layer[0]!r}"
        return f"AttnLRP({type(self.model).__name__}{layer}, composite={self.composite!r})"

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """The relevance of each input token (or feature) for ``target`` (see the class docstring).

        Returns:
            ``(N, L)`` (``(N, K, L)``) at a layer; otherwise one map per input
            shaped as the input, or ``(N, K, ...)`` for an ``(N, K)`` target,
            in the form of ``inputs``.
        """
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        batch_size = check_batch_size(batch_size)
        layer = self._layer
        if layer is None and not all(t.is_floating_point() for t in batch.tensors):
            assert isinstance(self.model, nn.Module)
            layer = _input_embeddings(self.model)

        def run(start: int, stop: int) -> tuple[Tensor, ...]:
            index = torch.arange(start, stop, device=batch.device)
            return self._block(batch.block(start, stop), args.block(start, stop), resolved, index, layer)

        with self._guard():
            blocks = map_blocks(batch.n, batch_size, run)
        maps = tuple(parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*blocks))
        return maps[0] if layer is not None else batch.restore(maps)

    def _block(
        self,
        rows: tuple[Tensor, ...],
        args: tuple[Any, ...],
        target: Target,
        example: Tensor,
        layer: tuple[str, nn.Module] | None,
    ) -> tuple[Tensor, ...]:
        """The relevance of one block of rows: one forward pass, one rule-modified backward pass per target."""
        model = self.model
        assert isinstance(model, nn.Module)
        leaves = tuple(_leaf(r) if r.is_floating_point() else r for r in rows)
        captured: list[Tensor] = []
        with attn_lrp_recording(model) as record, _layer_leaves(layer, captured), eager_multihead_attention(model):
            # The model sees copies of the leaves, so in-place ops on its inputs are legal.
            output = run_model(model, tuple(t.clone() if t.requires_grad else t for t in leaves), args)
        if layer is not None:
            if len(captured) != 1:
                raise ValueError(
                    f"layer {layer[0]!r} ran {len(captured)} times in one forward pass; choose a layer that runs "
                    "exactly once"
                )
            explained: list[Tensor | Slot] = [captured[0]]
        else:
            explained = list(leaves)
        scores = target.scores(output, example)
        root, seeds = rooted_seeds(scores, output)
        rule_set = AttnLrpRules(record, self.composite.assign(model), self.composite.stabilizer, root, len(seeds) > 1)
        carry = GraphBackward(root, explained, rule_set, record.trace)
        value = root.detach()
        per_seed = [carry(seed * value) for seed in seeds]
        if layer is not None:
            per_seed = [[r[0].sum(-1)] for r in per_seed]
        if scores.dim() == 1:
            return tuple(r.detach() for r in per_seed[0])
        return tuple(torch.stack(maps, dim=1).detach() for maps in zip(*per_seed))


@contextmanager
def _layer_leaves(layer: tuple[str, nn.Module] | None, captured: list[Tensor]) -> Iterator[None]:
    """Replace the layer's output (this thread only) by an equal leaf that requires grad, collected in ``captured``."""
    if layer is None:
        yield
        return
    name, module = layer
    owner = threading.get_ident()

    def hook(module: nn.Module, args: Any, output: Any) -> Tensor | None:
        if threading.get_ident() != owner:
            return None
        if not isinstance(output, Tensor) or not output.is_floating_point():
            raise TypeError(
                f"layer {name!r} returns {type(output).__name__ if not isinstance(output, Tensor) else output.dtype}; "
                "AttnLRP reads relevance at a layer returning one floating-point Tensor (e.g. the token embeddings)"
            )
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # in-place ops after the layer change the copy, never the leaf

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _input_embeddings(model: nn.Module) -> tuple[str, nn.Module]:
    """The token-embedding module of ``model`` (see :class:`AttnLRP`), as ``(name, module)``."""
    for name, module in model.named_modules():
        getter = getattr(module, "get_input_embeddings", None)
        found = getter() if callable(getter) else None
        if isinstance(found, nn.Module):
            prefix = f"{name}." if name else ""
            inner = next(n for n, m in module.named_modules() if m is found)
            return prefix + inner, found
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            return name, module
    raise ValueError(
        f"the inputs hold token ids but {type(model).__name__} has no get_input_embeddings() and no nn.Embedding; "
        "pass layer= the module whose output the relevance is read at"
    )
