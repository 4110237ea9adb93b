"""What the two text explainers share: the wrapped model, the method, the baseline token and the feature layout."""

from __future__ import annotations

from typing import Any

from torch import nn

from .methods import TokenMethod, token_method
from .model import HFModel


class TokenExplainer:
    """Base of :class:`~attrib.text.ClassifierExplainer` and :class:`~attrib.text.GenerationExplainer`.

    Holds the model (wrapped in :class:`HFModel` unless it already is one),
    the resolved method (a name of ``methods`` or an attrib class), the
    tokenizer, the baseline token (``"pad"``, ``"mask"``, ``"unk"``, ... or an
    id), the feature granularity (``"token"`` or ``"word"``) and whether
    special tokens are kept out of the explanation.

    Raises:
        ValueError: an unknown method name or granularity.
        TypeError: ``keep_special`` is not a bool, or the model is not a module.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | type,
        methods: tuple[str, ...],
        *,
        tokenizer: Any,
        baseline: str | int,
        granularity: str,
        keep_special: bool,
        embeddings: str | nn.Module | None,
    ) -> None:
        self.model = (
            model if isinstance(model, HFModel) and embeddings is None else HFModel(model, embeddings=embeddings)
        )
        self.spec: TokenMethod = token_method(method, methods)
        if granularity not in ("token", "word"):
            raise ValueError(f"granularity must be 'token' or 'word', got {granularity!r}")
        if not isinstance(keep_special, bool):
            raise TypeError(f"keep_special must be a bool, got {type(keep_special).__name__}")
        self.tokenizer = tokenizer
        self.baseline = baseline
        self.granularity = granularity
        self.keep_special = keep_special

    def _ids_source(self) -> Any:
        """Where named tokens' ids come from: the tokenizer, else the model's config (``pad_token_id``, ...)."""
        return self.tokenizer if self.tokenizer is not None else getattr(self.model.wrapped, "config", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model.model).__name__}, method={self.spec.name!r})"
