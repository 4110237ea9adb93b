r"""Attention-aware maps for transformers: attention rollout and Chefer et al.'s gradient-weighted relevance.

Both read each self-attention layer's probabilities :math:`A_l` ``(N, H, L, L)``
from the model's own forward pass (:mod:`attrib.core.attention`: HuggingFace
models with ``attn_implementation="eager"``, hand-written blocks,
``nn.MultiheadAttention`` recomputed step by step), combine the layers into
one ``(L, L)`` token-to-token matrix and return the row of the explained
token (``token=0``: the class token of ViT/BERT; ``token=-1``: the last token,
as for GPT-2, each example's last *real* token when an attention mask is among
the forward arguments, see :func:`real_token_positions`; or one position per
example). Text gives ``(N, L)``; an image
input ``(N, C, H, W)`` gives the patch tokens as a map ``(N, 1, h, w)`` (the
class and distillation tokens dropped, see :func:`attrib.core.attention.token_map`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..attribution import Attribution
from ..core.attention import (
    AttentionRecorder,
    check_head_fusion,
    check_token,
    eager_multihead_attention,
    explained_rows,
    fuse_heads,
    no_attention_error,
    token_map,
)
from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import run_model
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..targets import Target, TargetLike, resolve_target


class _AttentionMethod(Attribution):
    """Shared driver: forward passes of ``batch_size`` rows with the attention recorded, then a row per example."""

    def _run(
        self,
        inputs: InputsLike,
        target: TargetLike,
        token: int | Tensor,
        batch_size: BatchSize,
        additional_forward_args: Any,
        block: Any,
    ) -> Tensor:
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n, batch.device)
        token = check_token(token)
        batch_size = check_batch_size(batch_size)
        if isinstance(token, int) and token < 0:
            mask = padding_mask(batch.tensors[0], args.args)
            if mask is not None:
                token = real_token_positions(mask, token)

        def run(start: int, stop: int) -> Tensor:
            index = torch.arange(start, stop, device=batch.device)
            rows = token if isinstance(token, int) else token.to(batch.device)[start:stop]
            return block(batch.block(start, stop), args.block(start, stop), resolved, index, rows)  # type: ignore[no-any-return]

        if isinstance(token, Tensor) and token.shape != (batch.n,):
            raise ValueError(
                f"token must be an int or hold one position per example (N={batch.n},), got {tuple(token.shape)}"
            )
        with self._guard():
            parts = map_blocks(batch.n, batch_size, run)
        return token_map(torch.cat(parts), tuple(batch.tensors[0].shape))

    def _recorded(self, rows: tuple[Tensor, ...], args: tuple[Any, ...], recorder: AttentionRecorder) -> Any:
        """The model output of ``rows``, with the attention maps recorded into ``recorder``."""
        model = self.model
        with recorder:
            if isinstance(model, torch.nn.Module):
                with eager_multihead_attention(model, recorder):
                    output = run_model(model, rows, args)
            else:
                output = run_model(model, rows, args)
        if not recorder.maps:
            raise no_attention_error(model)
        return output


def padding_mask(inputs: Tensor, args: tuple[Any, ...]) -> Tensor | None:
    """The attention mask among the forward arguments of token inputs, or None.

    For token ids ``(N, L)``: the first argument that is an integer or bool
    tensor of the same shape holding only 0 and 1 (``model(ids, mask, ...)``,
    as :class:`attrib.text.HFModel` takes it). Other inputs (images) have none.
    """
    if inputs.dim() != 2 or inputs.is_floating_point():
        return None
    for arg in args:
        if (
            isinstance(arg, Tensor)
            and arg.shape == inputs.shape
            and not arg.is_floating_point()
            and not arg.is_complex()
            and bool(((arg == 0) | (arg == 1)).all())
        ):
            return arg
    return None


def real_token_positions(mask: Tensor, token: int) -> Tensor:
    """``(N,)`` the position of each example's ``-token``-th last real token (``mask`` != 0), ``token < 0``.

    With right padding ``token=-1`` is each example's last real token, not the
    padding after it; with left padding (or none) it is position ``L - 1``.

    Raises:
        ValueError: an example with fewer than ``-token`` real tokens.
    """
    real = mask != 0
    k = -token
    counts = real.sum(1)
    if bool((counts < k).any()):
        short = int(counts.argmin())
        raise ValueError(
            f"token={token} asks for the {k}-th last real token, but example {short} has "
            f"{int(counts[short])} real tokens (attention mask != 0)"
        )
    after = real.flip(1).cumsum(1).flip(1)  # real tokens at or after each position
    return (real & (after == k)).to(torch.uint8).argmax(1)


def _batch_size_of(rows: tuple[Tensor, ...]) -> int:
    return rows[0].shape[0]


def _select_row(matrix_rows: Tensor, length: int, token: int | Tensor) -> Tensor:
    """One-hot rows ``(R, L)`` at the explained positions."""
    r = matrix_rows.shape[0]
    position = explained_rows(token, r, length, matrix_rows.device)
    return torch.nn.functional.one_hot(position, length).to(matrix_rows.dtype)


def _k_of(target: Target) -> int | None:
    """The ``K`` of an ``(N, K)`` class target, None otherwise."""
    if target.kind == "index" and target.indices is not None and target.indices.dim() == 2:
        return int(target.indices.shape[1])
    return None


class AttentionRollout(_AttentionMethod):
    r"""Attention rollout (Abnar & Zuidema, 2020). **Class-agnostic**: the map ignores ``target``.

    Per layer the heads are fused (``head_fusion``: mean, max or min) and the
    residual connection is added as an identity, rows re-normalised:

    .. math:: \tilde A_l = \mathrm{rownorm}\big((1 - \alpha)\, \mathrm{fuse}_h(A_l) + \alpha I\big),
              \qquad \mathrm{rollout} = \tilde A_L \tilde A_{L-1} \cdots \tilde A_1

    with :math:`\alpha` = ``residual`` (0.5 in the paper). The map is row
    ``token`` of the rollout: how much the explained token's final
    representation draws on each input token. Only that row is propagated
    (:math:`v \leftarrow v \tilde A_l`, ``L`` matrix-vector products per layer).

    Shapes: ``(N, L)`` for token inputs; ``(N, 1, h, w)`` for images
    ``(N, C, H, W)``; ``(N, K, ...)`` (the same map repeated) for an ``(N, K)``
    target. Padding is handled by the model's attention mask: padded keys get
    no attention, so their columns are 0. ``token``: an int position (0: the
    class token) or one per example ``(N,)``; a negative int counts from the
    end, and from each example's last *real* token when token ids come with
    an attention mask among ``additional_forward_args`` (the first ``(N, L)``
    0/1 integer tensor there), so ``token=-1`` never explains a right-padded
    GPT-2 batch at its padding. One forward pass per block of
    ``batch_size`` examples, without gradients.

    Example:
        >>> rollout = attrib.AttentionRollout(vit)                       # HF ViT with eager attention
        >>> maps = rollout.attribute(images, head_fusion="max")           # (N, 1, h, w)
        >>> text = attrib.AttentionRollout(HFModel(bert)).attribute(ids, additional_forward_args=(mask,))  # (N, L)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        token: int | Tensor = 0,
        head_fusion: str = "mean",
        residual: float = 0.5,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Row ``token`` of the attention rollout for each example (see the class docstring)."""
        fusion = check_head_fusion(head_fusion)
        if isinstance(residual, bool) or not isinstance(residual, (int, float)) or not 0.0 <= residual <= 1.0:
            raise ValueError(f"residual must be a float in [0, 1] (the weight of the identity), got {residual!r}")
        alpha = float(residual)
        k: list[int | None] = []

        def block(
            rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor, token: int | Tensor
        ) -> Tensor:
            k.append(_k_of(target))
            recorder = AttentionRecorder(_batch_size_of(rows), lambda maps: fuse_heads(maps, fusion))
            with torch.no_grad():
                output = self._recorded(rows, args, recorder)
                if target.kind != "predicted":  # the map ignores the target, but a bad one is still an error
                    target.scores(output, example)
                return rollout_row(recorder.maps, token, alpha)

        maps = self._run(inputs, target, token, batch_size, additional_forward_args, block)
        if k and k[0] is not None:
            return maps.unsqueeze(1).expand(maps.shape[0], k[0], *maps.shape[1:]).clone()
        return maps


def rollout_row(fused: list[Tensor], token: int | Tensor, residual: float) -> Tensor:
    """Row ``token`` of :math:`\\tilde A_L \\cdots \\tilde A_1` for fused maps ``(R, L, L)`` (layer order)."""
    length = fused[0].shape[-1]
    v = _select_row(fused[0][:, 0], length, token)
    eye = torch.eye(length, dtype=fused[0].dtype, device=fused[0].device)
    for a in reversed(fused):
        mixed = (1.0 - residual) * a + residual * eye
        mixed = mixed / mixed.sum(-1, keepdim=True).clamp_min(torch.finfo(mixed.dtype).tiny)
        v = torch.bmm(v.unsqueeze(1), mixed).squeeze(1)
    return v


class GradientWeightedRollout(_AttentionMethod):
    r"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability", ICCV 2021).

    Each layer's attention is weighted by the gradient of the target score
    :math:`S` w.r.t. it, rectified and averaged over heads, and the layers are
    accumulated with the identity standing for the residual connections:

    .. math:: \bar A_l = \mathbb{E}_h\big[(\nabla_{A_l} S \odot A_l)^+\big], \qquad
              R \leftarrow R + \bar A_l R \quad (l = 1..L,\ R_0 = I)

    The map is row ``token`` of :math:`R = (I + \bar A_L) \cdots (I + \bar A_1)`
    (it includes the explained token's own 1 from the identity). The gradients
    are those of the full graph (each :math:`A_l` also reaches later layers);
    for token ids with frozen parameters the first layer's attention is made a
    leaf of the graph, with the same value. Targets as everywhere in attrib
    (class, ``(N, K)``, callable, :class:`attrib.Neuron`): ``K`` targets cost
    one forward pass and ``K`` backward passes. Shapes as
    :class:`AttentionRollout`: ``(N, L)``, ``(N, 1, h, w)`` for images,
    ``(N, K, ...)`` for ``K`` targets; ``token`` (negative: from each
    example's last real token under an attention mask) as there.

    Example:
        >>> chefer = attrib.GradientWeightedRollout(vit)
        >>> maps = chefer.attribute(images, target=labels, batch_size=16)         # (N, 1, h, w)
        >>> text = attrib.GradientWeightedRollout(HFModel(bert)).attribute(
        ...     ids, target=1, additional_forward_args=(mask,))                      # (N, L)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        token: int | Tensor = 0,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Row ``token`` of Chefer et al.'s relevance matrix for each example (see the class docstring)."""

        def block(
            rows: tuple[Tensor, ...], args: tuple[Any, ...], target: Target, example: Tensor, token: int | Tensor
        ) -> Tensor:
            recorder = AttentionRecorder(_batch_size_of(rows), differentiable=True)
            output = self._recorded(rows, args, recorder)
            scores = target.scores(output, example)
            columns = [scores] if scores.dim() == 1 else list(scores.unbind(1))
            maps = recorder.maps
            out = []
            for j, column in enumerate(columns):
                if column.requires_grad:
                    grads = torch.autograd.grad(
                        column.sum(), maps, retain_graph=j < len(columns) - 1, allow_unused=True
                    )
                else:
                    grads = tuple(torch.zeros_like(a) for a in maps)
                weighted = [
                    recorder.heads(a.detach() * (torch.zeros_like(a) if g is None else g)).clamp(min=0).mean(1)
                    for a, g in zip(maps, grads)
                ]
                out.append(chefer_row(weighted, token))
            return out[0] if scores.dim() == 1 else torch.stack(out, dim=1)

        return self._run(inputs, target, token, batch_size, additional_forward_args, block)


def chefer_row(weighted: list[Tensor], token: int | Tensor) -> Tensor:
    """Row ``token`` of :math:`(I + \\bar A_L) \\cdots (I + \\bar A_1)` for maps ``(R, L, L)`` (layer order)."""
    length = weighted[0].shape[-1]
    v = _select_row(weighted[0][:, 0], length, token)
    for a in reversed(weighted):
        v = v + torch.bmm(v.unsqueeze(1), a).squeeze(1)
    return v


__all__ = ["AttentionRollout", "GradientWeightedRollout"]
