"""Tiny HuggingFace models and an offline tokenizer for the text tests (no downloads).

Everything is built from configs and filled from a private ``torch.Generator``
seeded with ``seed``: the same seed gives bit-identical weights, and torch's
global RNG is left as it was (the models' own init runs inside
``torch.random.fork_rng``, then every parameter is overwritten). Attention is
``"eager"`` so that attention probabilities are ordinary tensors in the graph.

* :func:`tiny_tokenizer`: a word-level fast tokenizer over :data:`WORDS`, with
  ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0..4) and ``<bos>``/``<eos>`` (ids 5,
  6). ``style="bert"`` wraps every text as ``[CLS] ... [SEP]`` (for the
  classifier); ``style="gpt2"`` adds nothing (for the causal LM).
* :func:`tiny_bert_classifier`, :func:`tiny_gpt2`, :func:`tiny_vit`: 2-layer,
  width-32, 2-head models in eval mode, vocabulary the tokenizer's.

Example:
    >>> tok = tiny_tokenizer()
    >>> enc = tok(["the cat sat", "a good movie"], padding=True, return_tensors="pt")
    >>> tiny_bert_classifier(0)(**enc).logits.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<bos>", "<eos>")
WORDS: tuple[str, ...] = (
    "the", "a", "cat", "dog", "sat", "on", "mat", "movie", "film", "was", "is", "good", "bad", "great",
    "terrible", "not", "very", "and", "but", "alice", "bob", "lives", "in", "paris", "london", "rome",
    "works", "at", "bank", "school", "she", "he", "likes", "tea", "coffee", "it", "rained", "today",
    "sunny", "city", "big", "small", "red", "blue", "house", "car", ".", ",", "!", "?",
)  # fmt: skip
"""The tokenizer's words, ids ``len(SPECIALS) ..`` in this order."""

VOCAB_SIZE = len(SPECIALS) + len(WORDS)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID, EOS_ID = range(7)
NUM_LABELS = 2


def tiny_tokenizer(style: str = "bert") -> Any:
    """A ``PreTrainedTokenizerFast`` (word level, lower-cased, punctuation split) built offline.

    ``style="bert"``: ``[CLS] text [SEP]`` (pairs: ``[CLS] a [SEP] b [SEP]``),
    right padding with ``[PAD]``. ``style="gpt2"``: no special tokens added,
    ``<bos>``/``<eos>`` known, ``[PAD]`` as the pad token.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style not in ("bert", "gpt2"):
        raise ValueError(f"style must be 'bert' or 'gpt2', got {style!r}")
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if style == "bert":
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            padding_side="right",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="right",
    )


def _reinitialise(model: nn.Module, seed: int, std: float) -> None:
    """Overwrite every parameter from a private generator: matrices ~ N(0, std^2), norms near 1, biases small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() >= 2:
                p.copy_(noise * std)
            elif "norm" in name.lower() or "ln_" in name:
                p.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def _built(factory: Any, seed: int, std: float) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    _reinitialise(model, seed, std)
    return model.eval()


def tiny_bert_classifier(seed: int = 0, *, num_labels: int = NUM_LABELS) -> Any:
    """``BertForSequenceClassification``: 2 layers, hidden 32, 2 heads, eager attention, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=num_labels,
        pad_token_id=PAD_ID,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    return _built(lambda: BertForSequenceClassification(config), seed, std=0.3)


def tiny_gpt2(seed: int = 0) -> Any:
    """``GPT2LMHeadModel``: 2 layers, width 32, 2 heads, 64 positions, eager attention, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    config._attn_implementation = "eager"
    return _built(lambda: GPT2LMHeadModel(config), seed, std=0.3)


def tiny_vit(seed: int = 0, *, num_labels: int = 10) -> Any:
    """``ViTForImageClassification``: 32x32 RGB images, 8x8 patches (16 + 1 tokens), 2 layers, width 32."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    return _built(lambda: ViTForImageClassification(config), seed, std=0.3)
