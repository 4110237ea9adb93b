"""Prompts built from a template whose fields are the features (Captum's ``TextTemplateInput``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .model import TargetLogProbs


class TemplateInput:
    """A prompt ``template.format(*values)`` whose fields are switched on and off as features.

    A field that is off takes its baseline value (the empty string by
    default), and the prompt is tokenized again, so fields may have any
    number of tokens and a perturbed prompt may have another length. Fields
    sharing an id in ``mask`` are one feature.

    Args:
        template: a format string with one ``{}`` per field (``{name}`` when
            ``values`` is a mapping), or a callable taking the values.
        values: the fields' values, a list or a mapping (keyword fields).
        baselines: their values when switched off, in the form of ``values``
            (None: empty strings).
        mask: optional feature id per field, in the form of ``values``.

    Example:
        >>> prompt = TemplateInput("{} lives in {} and works at a {}", ["alice", "paris", "bank"],
        ...                        baselines=["bob", "london", "school"])
        >>> prompt.text([True, False, True])
        'alice lives in london and works at a bank'
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: Sequence[str] | Mapping[str, str],
        baselines: Sequence[str] | Mapping[str, str] | None = None,
        mask: Sequence[int] | Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(template, str) and not callable(template):
            raise TypeError(f"template must be a format string or a callable, got {type(template).__name__}")
        self.keys: list[str] | None = list(values) if isinstance(values, Mapping) else None
        self.values = self._fields(values, "values")
        if not self.values:
            raise ValueError("values must hold at least one field")
        self.baselines = [""] * len(self.values) if baselines is None else self._fields(baselines, "baselines")
        ids = list(range(len(self.values))) if mask is None else self._fields(mask, "mask", kind=int)
        self.mask = ids
        self.template = template
        self.text([True] * len(self.values))  # fails now, clearly, if the template does not take the fields

    def _fields(self, entries: Any, name: str, kind: type = str) -> list[Any]:
        if self.keys is not None:
            if not isinstance(entries, Mapping) or set(entries) != set(self.keys):
                raise ValueError(f"{name} must be a mapping with the keys of values ({', '.join(self.keys)})")
            items = [entries[k] for k in self.keys]
        else:
            if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
                raise TypeError(f"{name} must be a list with one entry per field, got {type(entries).__name__}")
            items = list(entries)
        if name != "values" and len(items) != len(self.values):
            raise ValueError(f"{name} must have one entry per field ({len(self.values)}), got {len(items)}")
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
            raise TypeError(f"{name} must hold {kind.__name__} entries")
        return items

    @property
    def n_fields(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        template = self.template if isinstance(self.template, str) else getattr(self.template, "__name__", "<callable>")
        if self.keys is not None:
            values: Any = dict(zip(self.keys, self.values))
            baselines: Any = dict(zip(self.keys, self.baselines))
            mask: Any = dict(zip(self.keys, self.mask))
        else:
            values, baselines, mask = self.values, self.baselines, self.mask
        shown = f"TemplateInput({template!r}, values={values!r}, baselines={baselines!r}"
        default_mask = self.mask == list(range(len(self.values)))
        return shown + (")" if default_mask else f", mask={mask!r})")

    def text(self, present: Sequence[bool]) -> str:
        """The prompt with field ``i`` at its value where ``present[i]`` and at its baseline elsewhere."""
        fields = [v if on else b for v, b, on in zip(self.values, self.baselines, present)]
        if callable(self.template) and not isinstance(self.template, str):
            return self.template(**dict(zip(self.keys, fields))) if self.keys is not None else self.template(*fields)
        try:
            if self.keys is not None:
                return self.template.format(**dict(zip(self.keys, fields)))
            return self.template.format(*fields)
        except (IndexError, KeyError) as err:
            raise ValueError(
                f"template {self.template!r} does not take the {len(fields)} fields given ({err})"
            ) from None

    def feature_mask(self, device: torch.device | None = None) -> Tensor:
        """``(1, n_fields)`` the feature id of each field."""
        return torch.tensor([self.mask], dtype=torch.long, device=device)


class TemplateLogProbs(nn.Module):
    """``present (R, n_fields) -> (R, T)``: the continuation's log-probabilities for each row's prompt.

    Row ``r``'s prompt is ``template.text(present[r] > 0.5)``, tokenized as
    the tokenizer does by default (special tokens added); the prompts of a
    block are padded together and scored by :class:`TargetLogProbs` in one
    forward pass, with the further per-token inputs its model takes
    (``token_type_ids``, ...) from the same tokenization. Tokenizing is host
    work: each block's flags are read once.
    """

    def __init__(self, scorer: TargetLogProbs, template: TemplateInput, tokenizer: Any) -> None:
        super().__init__()
        self.scorer = scorer
        self.template = template
        self.tokenizer = tokenizer

    def prompt_ids(self, present: Tensor) -> tuple[Tensor, ...]:
        """The padded ids and mask ``(R, L)`` of each row's prompt, on ``present``'s device.

        Then one ``(R, L)`` tensor for each of the scorer's model's
        ``extra_inputs``, read from the same tokenizer output.
        """
        texts = [self.template.text(row) for row in (present > 0.5).tolist()]
        encoded = self.tokenizer(texts)
        rows = [list(ids) for ids in encoded["input_ids"]]
        if any(not r for r in rows):
            raise ValueError("a prompt of the template tokenizes to no tokens; give the fields non-empty baselines")
        width = max(len(r) for r in rows)

        def padded(entries: list[list[int]], dtype: torch.dtype = torch.long) -> Tensor:
            return torch.tensor([e + [0] * (width - len(e)) for e in entries], dtype=dtype, device=present.device)

        ids = padded(rows)
        mask = padded([[1] * len(r) for r in rows], torch.int64)
        extra = []
        for name in self.scorer.lm.extra_inputs:
            if name not in encoded:
                raise ValueError(f"the tokenizer gives {name} for the template's prompt but not for its perturbed ones")
            extra.append(padded([list(v) for v in encoded[name]]))
        return (ids, mask, *extra)

    def forward(self, present: Tensor) -> Tensor:
        return self.scorer(*self.prompt_ids(present))  # type: ignore[no-any-return]
