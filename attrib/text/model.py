"""Adapters that let attrib's methods drive HuggingFace-style text models.

attrib's methods call ``model(*inputs, *additional_forward_args)`` with
positional tensors and read one tensor back. :class:`HFModel` turns that into
``model(input_ids=..., attention_mask=..., use_cache=False)`` (plus any further
per-token keywords it is told of, ``token_type_ids=`` of sentence pairs, in
order) and returns the logits; :class:`TargetLogProbs` scores a fixed continuation under a causal
LM with teacher forcing: one forward pass over ``prompt + target`` gives the
log-probability of every target token at once.

Both hold the wrapped model as a sub-module, so attrib's state guard covers
it (eval mode, ``requires_grad``), and neither changes the model's config:
``use_cache=False`` is passed per call where the model accepts it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.layers import resolve_layer


def _accepts(forward: Any, name: str, *, or_kwargs: bool = False) -> bool:
    """Whether ``forward`` names the keyword ``name`` (with ``or_kwargs``, a ``**kwargs`` takes it too)."""
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return or_kwargs
    if name in parameters:
        return parameters[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return or_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


#: Per-token inputs that :class:`TargetLogProbs` knows how to continue over the target positions.
CONTINUABLE = ("token_type_ids", "position_ids")


class HFModel(nn.Module):
    """A HuggingFace-style model as a positional ``(input_ids, attention_mask, *extra) -> logits`` module.

    ``HFModel(m)(ids, mask)`` calls ``m(input_ids=ids, attention_mask=mask,
    use_cache=False)`` (``use_cache`` only where ``m.forward`` names it) and
    returns the field ``output`` (``"logits"``) of the result (the first
    entry of a tuple output). Any model taking ``input_ids`` and
    ``attention_mask`` keywords works, e.g. ``...ForSequenceClassification``
    (logits ``(N, C)``) or ``...ForCausalLM`` (``(N, L, V)``).

    Further per-token tensors (``token_type_ids`` of a sentence pair,
    ``position_ids``) follow the mask positionally, in the order of
    ``extra_inputs``, and reach the model under those keywords. Passed as
    ``additional_forward_args=(mask, *extra)`` they follow the batched,
    interpolated or perturbed rows exactly as the mask does;
    :meth:`bind` picks them from :attr:`TokenInputs.extra_inputs
    <attrib.text.TokenInputs.extra_inputs>`.

    Args:
        model: the model to wrap (kept as the sub-module ``model``).
        output: which field of the model's output to return.
        embeddings: the input-embedding module, as a dotted name inside
            ``model`` or a sub-module; by default ``model.get_input_embeddings()``.
        extra_inputs: the keywords of the positional tensors after the mask.

    Example:
        >>> hf = HFModel(bert_classifier)
        >>> attrib.LayerIntegratedGradients(hf, hf.embeddings).attribute(
        ...     ids, target=1, baselines=pad_ids, additional_forward_args=(mask,))   # (N, L, D)
        >>> pairs = HFModel(bert_classifier, extra_inputs=("token_type_ids",))
        >>> pairs(ids, mask, token_type_ids)                                         # (N, C)
    """

    def __init__(
        self,
        model: nn.Module,
        output: str = "logits",
        *,
        embeddings: str | nn.Module | None = None,
        extra_inputs: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if isinstance(model, HFModel):
            model = model.wrapped
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module taking input_ids= and attention_mask=, got {type(model).__name__}"
            )
        if not isinstance(output, str):
            raise TypeError(f"output must be the name of a field of the model's output, got {type(output).__name__}")
        self.model = model
        self.output = output
        self._use_cache = _accepts(model.forward, "use_cache")
        if isinstance(extra_inputs, str) or not isinstance(extra_inputs, Sequence):
            raise TypeError(f"extra_inputs must be a sequence of keyword names, got {type(extra_inputs).__name__}")
        names = tuple(extra_inputs)
        for name in names:
            if not isinstance(name, str) or name in ("input_ids", "attention_mask") or names.count(name) > 1:
                raise ValueError(
                    f"extra_inputs must name the model's further keyword arguments once each (not input_ids or "
                    f"attention_mask), got {names!r}"
                )
            if not self.accepts(name):
                raise ValueError(f"{type(model).__name__}.forward takes no {name}= (extra_inputs={names!r})")
        self.extra_inputs = names
        if embeddings is None:
            getter = getattr(model, "get_input_embeddings", None)
            found = getter() if callable(getter) else None
            if not isinstance(found, nn.Module):
                raise ValueError(
                    f"{type(model).__name__} has no get_input_embeddings(); pass embeddings= the dotted name of its "
                    "token-embedding module (e.g. 'embed_tokens')"
                )
            self._embeddings_name = next(name for name, m in model.named_modules() if m is found)
        else:
            self._embeddings_name = resolve_layer(model, embeddings)[0]

    def accepts(self, name: str) -> bool:
        """Whether the wrapped model's ``forward`` takes the keyword ``name`` (named, or through ``**kwargs``)."""
        return _accepts(self.model.forward, name, or_kwargs=True)

    def taking(self, extra_inputs: Sequence[str]) -> HFModel:
        """This adapter (same model, output and embeddings) taking ``extra_inputs`` after the mask."""
        names = tuple(extra_inputs)
        if names == self.extra_inputs:
            return self
        return HFModel(self.model, self.output, embeddings=self._embeddings_name, extra_inputs=names)

    def bind(self, extra_inputs: Mapping[str, Tensor]) -> tuple[HFModel, tuple[Tensor, ...]]:
        """The adapter taking the per-token inputs ``extra_inputs`` (e.g. :attr:`TokenInputs.extra_inputs`), and them.

        Returns ``(adapter, tensors)``: call ``adapter(ids, mask, *tensors)``,
        or pass ``additional_forward_args=(mask, *tensors)`` to a method. An
        all-zero ``token_type_ids`` that the model does not take is dropped
        (it is every model's default segment), so that inputs from a
        BERT-style tokenizer still drive a model without segments.

        Raises:
            ValueError: an input the model's ``forward`` does not take.
        """
        names: list[str] = []
        tensors: list[Tensor] = []
        for name, value in extra_inputs.items():
            if self.accepts(name):
                names.append(name)
                tensors.append(value)
            elif not (name == "token_type_ids" and not bool(value.any())):
                raise ValueError(
                    f"the inputs carry {name} (per token) but {type(self.model).__name__}.forward takes no {name}=; "
                    f"explaining without it would explain another input: build the inputs without {name}, or wrap "
                    "the model so that it takes it"
                )
        return self.taking(names), tuple(tensors)

    @property
    def wrapped(self) -> nn.Module:
        """The wrapped model."""
        return self.model

    @property
    def embeddings(self) -> nn.Module:
        """The wrapped model's input-embedding module (token ids -> ``(N, L, D)``)."""
        return self.model.get_submodule(self._embeddings_name)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's config allows, or None if it does not say."""
        config = getattr(self.model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *extra: Tensor) -> Tensor:
        if len(extra) != len(self.extra_inputs):
            raise TypeError(
                f"HFModel takes input_ids, attention_mask and then {len(self.extra_inputs)} per-token tensors "
                f"({', '.join(self.extra_inputs) or 'none'}), got {len(extra)}"
            )
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        kwargs.update(zip(self.extra_inputs, extra))
        if self._use_cache:
            kwargs["use_cache"] = False
        result = self.model(**kwargs)
        if isinstance(result, Tensor):
            return result
        if isinstance(result, (tuple, list)) and not hasattr(result, self.output):
            return result[0]  # type: ignore[no-any-return]
        if isinstance(result, dict) and self.output in result:
            return result[self.output]  # type: ignore[no-any-return]
        value = getattr(result, self.output, None)
        if not isinstance(value, Tensor):
            raise TypeError(f"the model's output ({type(result).__name__}) has no tensor field {self.output!r}")
        return value

    def extra_repr(self) -> str:
        extra = f", extra_inputs={self.extra_inputs!r}" if self.extra_inputs else ""
        return f"output={self.output!r}, embeddings={self._embeddings_name!r}{extra}"


def continuation(name: str, values: Tensor, lengths: Tensor, steps: int) -> Tensor:
    """The values ``(R, steps)`` of the per-token input ``name`` at the ``steps`` positions after each row's prompt.

    ``values`` ``(R, L)`` are the prompt's, ``lengths`` ``(R, 1)`` its real
    tokens per row (right padding). The continuation stays in the segment of
    the prompt's last token (``token_type_ids``: its type repeated, as
    HuggingFace's ``generate`` does) and counts on from its position
    (``position_ids``: last + 1, last + 2, ...).

    Raises:
        ValueError: any other input (how it would go on over a continuation is not defined).
    """
    last = values.gather(1, (lengths - 1).clamp_min(0))
    if name == "token_type_ids":
        return last.expand(values.shape[0], steps)
    if name == "position_ids":
        return last + 1 + torch.arange(steps, device=values.device, dtype=values.dtype)
    raise ValueError(_not_continuable(name))


def _not_continuable(name: str) -> str:
    return (
        f"the prompt carries the per-token input {name}, which cannot be continued over the target tokens (only "
        f"{', '.join(CONTINUABLE)} can); build the prompt without it"
    )


class TargetLogProbs(nn.Module):
    r"""Teacher-forced log-probabilities of a fixed continuation: ``(prompt_ids, prompt_mask) -> (R, T)``.

    For each row, the target ``y_1..y_T`` is appended right after the
    prompt's real tokens and one forward pass gives

    .. math:: \ell_t = \log p(y_t \mid x, y_{<t}),\qquad t = 1..T,

    read at the logits of the position before ``y_t`` (a causal model's
    logits there do not depend on later tokens, so this equals feeding the
    prefixes one at a time). With ``with_total`` a last column
    :math:`\sum_t \ell_t` is added. Prompts may have different lengths per
    row, padded on the right (the target overwrites a row's padding, so
    every prompt position keeps its place in the layer outputs).

    The model's further per-token inputs (its ``extra_inputs``) follow the
    mask, ``(R, L)`` each, and are continued over the target by
    :func:`continuation` (``token_type_ids``, ``position_ids``; any other is
    refused when the scorer is made).

    Args:
        model: an :class:`HFModel` of a causal LM (logits ``(R, L, V)``).
        target_ids: ``(T,)`` long, the continuation.
        with_total: add the column of the summed log-probabilities.

    Example:
        >>> lm = TargetLogProbs(HFModel(gpt2), target_ids)
        >>> lm(prompt_ids, prompt_mask).shape     # (R, T)
    """

    def __init__(self, model: HFModel, target_ids: Tensor, *, with_total: bool = False) -> None:
        super().__init__()
        for name in model.extra_inputs:
            if name not in CONTINUABLE:
                raise ValueError(_not_continuable(name))
        self.lm = model
        self.register_buffer("target_ids", target_ids.detach().long().reshape(-1), persistent=False)
        self.with_total = bool(with_total)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor | None = None, *extra: Tensor) -> Tensor:
        rows, length = prompt_ids.shape
        target = self.target_ids
        assert isinstance(target, Tensor)
        steps = target.shape[0]
        ids = prompt_ids
        mask = torch.ones_like(ids) if prompt_mask is None else prompt_mask.to(ids.dtype)
        lengths = mask.sum(1, keepdim=True)  # (R, 1)
        at = lengths + torch.arange(steps, device=ids.device)  # (R, T): where y_t goes
        tail = torch.zeros(rows, steps, dtype=ids.dtype, device=ids.device)
        combined = torch.cat([ids, tail], 1).scatter(1, at, target.to(ids.dtype).expand(rows, steps))
        combined_mask = torch.cat([mask, tail], 1).scatter(1, at, 1)
        names = self.lm.extra_inputs
        if len(extra) != len(names):
            raise TypeError(f"expected the prompt's {', '.join(names) or 'no'} per-token inputs after the mask")
        combined_extra = [
            torch.cat([value, value.new_zeros(rows, steps)], 1).scatter(
                1, at, continuation(name, value, lengths, steps)
            )
            for name, value in zip(names, extra)
        ]
        logits = self.lm(combined, combined_mask, *combined_extra)  # (R, L + T, V)
        before = (at - 1).unsqueeze(2).expand(rows, steps, logits.shape[2])
        log_probs = logits.gather(1, before).log_softmax(-1)  # (R, T, V)
        scores = log_probs.gather(2, target.view(1, steps, 1).expand(rows, steps, 1)).squeeze(2)
        return torch.cat([scores, scores.sum(1, keepdim=True)], 1) if self.with_total else scores
