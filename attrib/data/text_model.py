"""The shipped text classifier: token embedding, a two-layer transformer encoder, masked mean pooling, a linear head.

:class:`TextClassifier` maps token ids ``(N, L)`` (and an optional
attention mask ``(N, L)``) to logits ``(N, 2)`` over
:data:`attrib.data.text.LABELS`. The kept positions are those of the
attention mask if one is given, else those whose token is not ``<pad>``;
the others are masked out of every attention and of the pooling, so they do
not change the logits. This gives two readings of "replace a token by
``<pad>``", both useful to attribution:

* with the attention mask passed (as the example does, through
  ``additional_forward_args``), the position stays in the sequence with the
  ``<pad>`` embedding, which is zero: a reference token. The logits then
  depend on the ids only through ``model.embedding``, so Layer Integrated
  Gradients from ``<pad>`` baselines is complete;
* without it, the token is deleted (a faithfulness benchmark's deletion).

Attention is written out (no fused kernel) so that a sequence with no kept
position gives finite logits (the head's bias) instead of NaN.

The token embedding is ``model.embedding`` (an ``nn.Embedding`` whose
``<pad>`` row is zero), the layer to give LayerIntegratedGradients; learned
position embeddings are added after it, in :meth:`TextClassifier.forward`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .text import PAD_ID, VOCAB

TEXT_MODEL_NAME = "text-classifier"


class MaskedSelfAttention(nn.Module):
    r"""Multi-head self-attention over the kept positions only.

    :math:`\mathrm{softmax}(Q K^\top / \sqrt{d_h})` with the scores of dropped keys set to the
    dtype's lowest value, so their weight is exactly 0 (and a row with no kept key stays finite).
    Shapes: ``(N, L, D)``, keep ``(N, L)`` bool -> ``(N, L, D)``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)  # (N, H, L, L)
        lowest = torch.finfo(scores.dtype).min
        scores = torch.where(keep[:, None, None, :], scores, torch.full_like(scores, lowest))
        mixed = scores.softmax(-1) @ v  # (N, H, L, D/H)
        out: Tensor = self.out(mixed.transpose(1, 2).reshape(n, length, dim))
        return out


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MaskedSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), keep)
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class TextClassifier(nn.Module):
    r"""Embedding + transformer encoder + masked mean pooling + linear head.

    .. math::
        h^0_t = E[x_t] + P_t, \quad h^{\ell} = \mathrm{Block}_\ell(h^{\ell-1}; m), \quad
        \mathrm{logits} = W \frac{\sum_t m_t\,\mathrm{LN}(h^{\mathrm{last}}_t)}{\max(1, \sum_t m_t)} + b,

    with :math:`m` the kept positions: ``attention_mask != 0`` if it is given, else ``input_ids != pad_id``.

    Shapes: ``input_ids`` ``(N, L)`` long with ``L <= max_length``, ``attention_mask`` ``(N, L)``
    (bool or 0/1) or None -> logits ``(N, num_classes)``.

    Example:
        >>> from attrib.data import load_model, make_sequences
        >>> model = load_model("text-classifier")
        >>> batch = make_sequences(8, seed=0)
        >>> model(batch.input_ids, batch.attention_mask).argmax(1)   # (8,) predicted labels
    """

    attrib_layers = {"embedding": "embedding"}

    def __init__(
        self,
        vocab_size: int = len(VOCAB),
        num_classes: int = 2,
        *,
        dim: int = 32,
        heads: int = 2,
        layers: int = 2,
        hidden: int = 64,
        max_length: int = 32,
        pad_id: int = PAD_ID,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_length = max_length
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position = nn.Embedding(max_length, dim)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a long tensor (N, L), got {input_ids.dtype} {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"input_ids has length {length}, more than the model's max_length {self.max_length}")
        if attention_mask is None:
            keep = input_ids != self.pad_id
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        else:
            keep = attention_mask != 0
        positions = torch.arange(length, device=input_ids.device)
        x = self.embedding(input_ids) + self.position(positions)
        for block in self.blocks:
            x = block(x, keep)
        weights = keep.to(x.dtype).unsqueeze(-1)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1)
        out: Tensor = self.classifier(pooled)
        return out
