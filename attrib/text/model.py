"""Adapters that let attrib's methods drive HuggingFace-style text models.

attrib's methods call ``model(*inputs, *additional_forward_args)`` with
positional tensors and read one tensor back. :class:`HFModel` turns that into
``model(input_ids=..., attention_mask=..., use_cache=False)`` and returns the
logits; :class:`TargetLogProbs` scores a fixed continuation under a causal
LM with teacher forcing: one forward pass over ``prompt + target`` gives the
log-probability of every target token at once.

Both hold the wrapped model as a sub-module, so attrib's state guard covers
it (eval mode, ``requires_grad``), and neither changes the model's config:
``use_cache=False`` is passed per call where the model accepts it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ..core.layers import resolve_layer


def _accepts(forward: Any, name: str) -> bool:
    """Whether ``forward`` names the keyword ``name`` (a bare ``**kwargs`` does not count: it may refuse it)."""
    try:
        return name in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


class HFModel(nn.Module):
    """A HuggingFace-style model as a positional ``(input_ids, attention_mask) -> logits`` module.

    ``HFModel(m)(ids, mask)`` calls ``m(input_ids=ids, attention_mask=mask,
    use_cache=False)`` (``use_cache`` only where ``m.forward`` names it) and
    returns the field ``output`` (``"logits"``) of the result (the first
    entry of a tuple output). Any model taking ``input_ids`` and
    ``attention_mask`` keywords works, e.g. ``...ForSequenceClassification``
    (logits ``(N, C)``) or ``...ForCausalLM`` (``(N, L, V)``).

    Args:
        model: the model to wrap (kept as the sub-module ``model``).
        output: which field of the model's output to return.
        embeddings: the input-embedding module, as a dotted name inside
            ``model`` or a sub-module; by default ``model.get_input_embeddings()``.

    Example:
        >>> hf = HFModel(bert_classifier)
        >>> attrib.LayerIntegratedGradients(hf, hf.embeddings).attribute(
        ...     ids, target=1, baselines=pad_ids, additional_forward_args=(mask,))   # (N, L, D)
    """

    def __init__(self, model: nn.Module, output: str = "logits", *, embeddings: str | nn.Module | None = None) -> None:
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

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
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
        return f"output={self.output!r}, embeddings={self._embeddings_name!r}"


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
        self.lm = model
        self.register_buffer("target_ids", target_ids.detach().long().reshape(-1), persistent=False)
        self.with_total = bool(with_total)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor | None = None) -> Tensor:
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
        logits = self.lm(combined, combined_mask)  # (R, L + T, V)
        before = (at - 1).unsqueeze(2).expand(rows, steps, logits.shape[2])
        log_probs = logits.gather(1, before).log_softmax(-1)  # (R, T, V)
        scores = log_probs.gather(2, target.view(1, steps, 1).expand(rows, steps, 1)).squeeze(2)
        return torch.cat([scores, scores.sum(1, keepdim=True)], 1) if self.with_total else scores
