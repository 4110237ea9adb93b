"""Token inputs: ids, masks and word ids of a batch of texts, and what a perturbation may change.

:class:`TokenInputs` holds a padded batch ``(N, L)``. Three kinds of position
exist: *padding* (``attention_mask`` 0), *special tokens* (``[CLS]``,
``[SEP]``, ``<bos>``: ``special_tokens_mask``) and the *real* tokens of the
text. An explanation perturbs only real tokens (and special ones when
``keep_special=False``); every other position is *frozen*: its baseline is
the token itself (:func:`baseline_ids`), it joins a feature whose switch
changes nothing (:func:`token_feature_mask`), and its score is 0.

Example:
    >>> inputs = TokenInputs.from_texts(tokenizer, ["a good film", "not bad at all"])
    >>> baseline_ids(inputs, "pad", tokenizer)       # [CLS] [PAD] [PAD] [PAD] [SEP] ...
    >>> token_feature_mask(inputs, "word")           # (N, L) feature ids, one per word
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

_TOKEN_NAMES = ("pad", "mask", "unk", "bos", "eos", "cls", "sep")


@dataclass(frozen=True)
class TokenInputs:
    """A padded batch of token sequences.

    Attributes:
        input_ids: ``(N, L)`` long token ids.
        attention_mask: ``(N, L)`` long, 1 at real and special tokens, 0 at padding.
        special_tokens_mask: ``(N, L)`` bool, True at special tokens (never at padding).
        word_ids: ``(N, L)`` long, the word each token belongs to (``-1`` at special
            tokens and padding), or None when the tokenizer does not tell.
        tokens: the token strings per example (padding included), or None.
        extra_inputs: the encoding's other per-token ``(N, L)`` tensors, by the
            keyword the model takes them under (``token_type_ids`` of sentence
            pairs, ``position_ids``); the explainers pass them to the model with
            every row, as the attention mask (see :meth:`HFModel.bind
            <attrib.text.HFModel.bind>`). Empty for most inputs.

    Example:
        >>> enc = tokenizer(["the cat sat"], ["a good movie"], return_tensors="pt", return_token_type_ids=True)
        >>> TokenInputs.from_encoding(enc, tokenizer).extra_inputs["token_type_ids"]   # 0 0 0 0 0 1 1 1 1
    """

    input_ids: Tensor
    attention_mask: Tensor
    special_tokens_mask: Tensor
    word_ids: Tensor | None = None
    tokens: list[list[str]] | None = None
    extra_inputs: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            got = str(tuple(ids.shape)) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"input_ids must be an integer tensor (N, L), got {got}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one token of one example, got shape {tuple(ids.shape)}")
        for name in ("attention_mask", "special_tokens_mask", "word_ids"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Tensor) or value.shape != ids.shape):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must have the shape of input_ids {tuple(ids.shape)}, got {shape}")
        if self.tokens is not None and (
            len(self.tokens) != ids.shape[0] or any(len(row) != ids.shape[1] for row in self.tokens)
        ):
            raise ValueError(f"tokens must hold {ids.shape[1]} strings for each of the {ids.shape[0]} examples")
        if not isinstance(self.extra_inputs, Mapping):
            raise TypeError(
                f"extra_inputs must map keyword names to (N, L) tensors, got {type(self.extra_inputs).__name__}"
            )
        for name, value in self.extra_inputs.items():
            if not isinstance(name, str) or name in _OWN_KEYS:
                raise ValueError(
                    f"extra_inputs must be keyed by the model's other keyword arguments, not {name!r} "
                    "(input_ids, attention_mask and special_tokens_mask are fields of their own)"
                )
            if not isinstance(value, Tensor) or value.shape != ids.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"extra_inputs[{name!r}] must have the shape of input_ids {tuple(ids.shape)}, got {shape}"
                )

    @property
    def n(self) -> int:
        """The number of examples ``N``."""
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @property
    def lengths(self) -> Tensor:
        """``(N,)`` the number of non-padding tokens of each example."""
        return self.attention_mask.sum(1)

    def to(self, device: torch.device | str) -> TokenInputs:
        """The same inputs on ``device``."""
        word_ids = None if self.word_ids is None else self.word_ids.to(device)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            special_tokens_mask=self.special_tokens_mask.to(device),
            word_ids=word_ids,
            extra_inputs={name: value.to(device) for name, value in self.extra_inputs.items()},
        )

    def columns(self, keep: Tensor) -> TokenInputs:
        """The same examples restricted to the positions ``keep`` (``(L',)`` indices), every per-token field alike."""
        tokens = None if self.tokens is None else [[row[i] for i in keep.tolist()] for row in self.tokens]
        return TokenInputs(
            self.input_ids[:, keep],
            self.attention_mask[:, keep],
            self.special_tokens_mask[:, keep],
            None if self.word_ids is None else self.word_ids[:, keep],
            tokens,
            {name: value[:, keep] for name, value in self.extra_inputs.items()},
        )

    def frozen(self, keep_special: bool = True) -> Tensor:
        """``(N, L)`` bool: the positions never perturbed (padding; special tokens if ``keep_special``)."""
        frozen = self.attention_mask == 0
        return frozen | self.special_tokens_mask if keep_special else frozen

    @classmethod
    def from_ids(cls, input_ids: Tensor, attention_mask: Tensor | None = None, tokenizer: Any = None) -> TokenInputs:
        """Inputs from a tensor of ids ``(L,)`` or ``(N, L)`` (attention mask all ones by default).

        With a ``tokenizer`` the special tokens are those among its
        ``all_special_ids`` and the token strings are filled in.
        """
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a Tensor of token ids, got {type(input_ids).__name__}")
        ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
        if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor (L,) or (N, L), got shape {tuple(input_ids.shape)}")
        ids = ids.long()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.reshape(ids.shape).long()
        special = _special_ids(ids, tokenizer)
        tokens = None
        if tokenizer is not None:
            tokens = [list(tokenizer.convert_ids_to_tokens(row)) for row in ids.tolist()]
        return cls(ids, mask, special & (mask != 0), None, tokens)

    @classmethod
    def from_encoding(cls, encoding: Mapping[str, Any] | Any, tokenizer: Any = None) -> TokenInputs:
        """Inputs from a tokenizer's output (a ``BatchEncoding`` or a dict of tensors).

        Reads ``input_ids``, ``attention_mask`` (all ones if absent) and
        ``special_tokens_mask`` (else computed from ``tokenizer``'s special
        ids); word ids come from a fast tokenizer's ``encoding.word_ids(i)``
        (the words of a pair's second text numbered after the first's). Every
        other ``(N, L)`` entry (``token_type_ids``, ``position_ids``, ...; not
        ``labels`` nor ``offset_mapping``) is kept in :attr:`extra_inputs`, so
        the model is explained on exactly what ``model(**encoding)`` sees.
        """
        if not isinstance(encoding, Mapping) and not hasattr(encoding, "keys"):
            raise TypeError(
                "encoding must be a tokenizer's output (BatchEncoding) or a dict with input_ids, got "
                f"{type(encoding).__name__}"
            )
        if "input_ids" not in encoding:
            raise ValueError("encoding must hold input_ids (call the tokenizer with return_tensors='pt')")
        ids = torch.as_tensor(encoding["input_ids"])
        mask = encoding["attention_mask"] if "attention_mask" in encoding else None
        base = cls.from_ids(ids, None if mask is None else torch.as_tensor(mask), tokenizer)
        extra = _per_token_entries(encoding, base.input_ids.shape, ids.device)
        special = base.special_tokens_mask
        if "special_tokens_mask" in encoding:
            given = torch.as_tensor(encoding["special_tokens_mask"]).reshape(base.input_ids.shape).to(ids.device)
            # Tokenizers mark padding special too, and not the special tokens written in the text (``<bos> ...``).
            special = (given.bool() | special) & (base.attention_mask != 0)
        word_ids = None
        reader = getattr(encoding, "word_ids", None)
        if callable(reader) and getattr(encoding, "is_fast", True):
            try:
                rows = [reader(i) for i in range(base.n)]
            except (ValueError, IndexError):
                rows = None
            if rows is not None and all(r is not None for r in rows):
                word_ids = torch.tensor([[-1 if w is None else int(w) for w in row] for row in rows], device=ids.device)
                word_ids = torch.where(special | (base.attention_mask == 0), -1, word_ids)
                word_ids = _number_pair_words(encoding, word_ids)
        return replace(base, special_tokens_mask=special, word_ids=word_ids, extra_inputs=extra)

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: str | Sequence[str], **tokenizer_kwargs: Any) -> TokenInputs:
        """Tokenize ``texts`` (padded to the longest, special tokens added and marked).

        Extra keyword arguments go to the tokenizer call (``max_length``,
        ``truncation``, ``add_special_tokens``...).
        """
        if tokenizer is None or not callable(tokenizer):
            raise ValueError(
                "explaining texts needs a tokenizer (e.g. transformers.AutoTokenizer.from_pretrained(...)); "
                "pass tokenizer=..., or pass TokenInputs / token ids instead of strings"
            )
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise ValueError("texts must be a non-empty list of strings, got an empty one")
        if not all(isinstance(t, str) for t in batch):
            raise TypeError("texts must be a string or a non-empty list of strings")
        options = {"padding": True, "return_special_tokens_mask": True, "return_tensors": "pt", **tokenizer_kwargs}
        return cls.from_encoding(tokenizer(batch, **options), tokenizer)


_OWN_KEYS = ("input_ids", "attention_mask", "special_tokens_mask")
#: Entries of an encoding that are not model inputs (or not the model's inputs to explain).
_NOT_INPUTS = (*_OWN_KEYS, "labels", "offset_mapping", "length", "overflow_to_sample_mapping")


def _per_token_entries(encoding: Any, shape: torch.Size, device: torch.device) -> dict[str, Tensor]:
    """The encoding's other ``(N, L)`` entries (``token_type_ids``, ``position_ids``, ...), as tensors."""
    extra: dict[str, Tensor] = {}
    for name in encoding.keys():
        if not isinstance(name, str) or name in _NOT_INPUTS:
            continue
        try:
            value = torch.as_tensor(encoding[name])
        except (TypeError, ValueError, RuntimeError):
            continue
        if value.dim() == 2 and value.shape == shape:
            extra[name] = value.to(device)
    return extra


def _number_pair_words(encoding: Any, word_ids: Tensor) -> Tensor:
    """Word ids unique across a pair's two texts: the second text's words numbered after the first's.

    A fast tokenizer numbers the words of each text of a pair from 0
    (``encoding.sequence_ids(i)`` tells which text a token comes from).
    """
    reader = getattr(encoding, "sequence_ids", None)
    if not callable(reader):
        return word_ids
    try:
        rows = [reader(i) for i in range(word_ids.shape[0])]
    except (ValueError, IndexError):
        return word_ids
    second = torch.tensor([[s == 1 for s in row] for row in rows], device=word_ids.device)
    if second.shape != word_ids.shape or not bool(second.any()):
        return word_ids
    first_count = torch.where(second | (word_ids < 0), -1, word_ids).max(1, keepdim=True).values + 1
    return torch.where(second & (word_ids >= 0), word_ids + first_count, word_ids)


def _special_ids(ids: Tensor, tokenizer: Any) -> Tensor:
    """``(N, L)`` bool: ids among the tokenizer's special ones, its unknown token excepted (it stands for a word)."""
    specials = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or []}
    specials.discard(getattr(tokenizer, "unk_token_id", None))
    if not specials:
        return torch.zeros_like(ids, dtype=torch.bool)
    return torch.isin(ids, torch.tensor(sorted(specials), device=ids.device))


def as_token_inputs(inputs: Any, tokenizer: Any = None, *, name: str = "inputs") -> TokenInputs:
    """``inputs`` (TokenInputs, text(s), an encoding or a tensor of ids) as :class:`TokenInputs`.

    Raises:
        ValueError: texts without a tokenizer.
        TypeError: anything else.
    """
    if isinstance(inputs, TokenInputs):
        return inputs
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise ValueError(f"{name}: texts must be a non-empty list of strings, got an empty {type(inputs).__name__}")
    if isinstance(inputs, str) or (
        isinstance(inputs, Sequence) and not isinstance(inputs, Tensor) and inputs and isinstance(inputs[0], str)
    ):
        if tokenizer is None:
            raise ValueError(
                f"{name} are texts, which need a tokenizer: pass tokenizer= to the explainer, "
                "or pass TokenInputs.from_texts(tokenizer, texts) / token ids"
            )
        return TokenInputs.from_texts(tokenizer, inputs)
    if isinstance(inputs, Tensor):
        return TokenInputs.from_ids(inputs, tokenizer=tokenizer)
    if isinstance(inputs, Mapping) or hasattr(inputs, "keys"):
        return TokenInputs.from_encoding(inputs, tokenizer)
    raise TypeError(
        f"{name} must be TokenInputs, a string or list of strings (with a tokenizer), a tokenizer output or a tensor "
        f"of token ids, got {type(inputs).__name__}"
    )


def token_id(token: str | int, tokenizer: Any = None, *, name: str = "baseline") -> int:
    """The id of ``token``: an int as is, or ``"pad"``/``"mask"``/``"unk"``/... looked up in ``tokenizer``.

    ``tokenizer`` may be anything with ``<name>_token_id`` attributes (a model config too).

    Raises:
        ValueError: a name without a tokenizer, or a tokenizer without that token.
        TypeError: neither an int nor a string.
    """
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):
        if token < 0:
            raise ValueError(f"{name} token id must be >= 0, got {token}")
        return int(token)
    if not isinstance(token, str):
        raise TypeError(f"{name} must be a token id (int) or one of {', '.join(_TOKEN_NAMES)}, got {token!r}")
    if token not in _TOKEN_NAMES:
        raise ValueError(f"{name} must be a token id (int) or one of {', '.join(_TOKEN_NAMES)}, got {token!r}")
    if tokenizer is None:
        raise ValueError(f"{name}={token!r} needs a tokenizer to look up its id; pass tokenizer= or an int id")
    value = getattr(tokenizer, f"{token}_token_id", None)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(
            f"the tokenizer has no {token} token, so {name}={token!r} has no id; choose another "
            f"({', '.join(_TOKEN_NAMES)}) or pass an int token id"
        )
    return int(value)


def baseline_ids(
    inputs: TokenInputs, token: str | int = "pad", tokenizer: Any = None, *, keep_special: bool = True
) -> Tensor:
    """Reference ids ``(N, L)``: ``token`` at every perturbable position, the input's own token elsewhere.

    Padding keeps its pad id and special tokens keep theirs (when
    ``keep_special``), so a path method from this baseline moves real
    tokens only.

    Example:
        >>> baseline_ids(inputs, "mask", tokenizer)    # [CLS] [MASK] [MASK] [SEP] [PAD]
    """
    value = token_id(token, tokenizer)
    return torch.where(inputs.frozen(keep_special), inputs.input_ids, torch.full_like(inputs.input_ids, value))


def token_feature_mask(inputs: TokenInputs, granularity: str = "token", *, keep_special: bool = True) -> Tensor:
    """Per-example feature ids ``(N, L)`` for the perturbation methods (:mod:`attrib.core.features`).

    ``"token"``: each perturbable token is its own feature (its id is its
    position). ``"word"``: the tokens of one word form a feature (needs
    ``word_ids``; special tokens, when perturbable, are features of their own).
    A frozen position (padding; special tokens with ``keep_special``) joins the
    example's first feature: its baseline is the token itself, so switching
    that feature changes it not at all, and it costs no extra player.

    Raises:
        ValueError: an unknown ``granularity``, or ``"word"`` without word ids.
    """
    if granularity not in ("token", "word"):
        raise ValueError(f"granularity must be 'token' or 'word', got {granularity!r}")
    n, length = inputs.input_ids.shape
    frozen = inputs.frozen(keep_special)
    positions = torch.arange(length, device=inputs.device).expand(n, length)
    if granularity == "token":
        ids = positions
    else:
        if inputs.word_ids is None:
            raise ValueError(
                "granularity='word' needs word ids: build the inputs with TokenInputs.from_texts or from_encoding "
                "of a fast tokenizer's output"
            )
        word = inputs.word_ids.to(inputs.device).long()
        ids = torch.where(word >= 0, word, length + positions)  # perturbable specials: features of their own
    # The example's first feature; an example without any gets a feature of its own (it then scores 0).
    big = torch.iinfo(torch.long).max
    first = torch.where(frozen, big, ids).min(1, keepdim=True).values
    first = torch.where(first == big, 0, first)
    return torch.where(frozen, first.expand(n, length), ids)
