"""What the text explainers return: per-token scores of a classifier, the target x prompt matrix of a generation.

Both are plain dataclasses of tensors and token strings; the pictures
(:meth:`TokenScores.to_html`, :meth:`GenerationScores.heatmap`, ...) come from
:mod:`attrib.viz.text`, imported only when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor


def _names(tokens: list[str] | None, ids: Tensor) -> list[str]:
    return list(tokens) if tokens is not None else [str(int(i)) for i in ids.tolist()]


@dataclass(frozen=True)
class TokenScores:
    """Per-token attributions of a sequence classifier's score.

    Attributes:
        scores: ``(N, L)`` (``(N, K, L)`` for ``K`` targets per example): the
            score of each token; exactly 0 at padding and at frozen special tokens.
        input_ids: ``(N, L)`` the explained ids.
        attention_mask: ``(N, L)``, 0 at padding.
        tokens: the token strings per example, or None without a tokenizer.
        target: the explained classes ``(N,)`` / ``(N, K)`` (the predicted ones
            for ``target=None``), or the callable target as given.
        method: the name of the method that produced the scores.
        frozen: ``(N, L)`` bool, the positions left out of the explanation (padding, kept special tokens).
    """

    scores: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    tokens: list[list[str]] | None
    target: Any
    method: str
    frozen: Tensor

    def _rows(self) -> list[tuple[list[str], Tensor]]:
        if self.scores.dim() != 2:
            raise ValueError(
                f"this view needs one score per token (N, L); these scores have shape {tuple(self.scores.shape)} "
                "(several targets per example): pick one, e.g. TokenScores.scores[:, k]"
            )
        rows = []
        for i in range(self.scores.shape[0]):
            keep = self.attention_mask[i] != 0
            names = _names(None if self.tokens is None else self.tokens[i], self.input_ids[i])
            rows.append(([n for n, k in zip(names, keep.tolist()) if k], self.scores[i][keep]))
        return rows

    def top(self, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """The ``k`` highest-scoring explained tokens of each example, as ``(position, token, score)``, best first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self._rows()  # checks the shape
        result = []
        for i in range(self.scores.shape[0]):
            positions = (~self.frozen[i]).nonzero().squeeze(1)
            values = self.scores[i].index_select(0, positions)
            names = _names(None if self.tokens is None else self.tokens[i], self.input_ids[i])
            order = values.argsort(descending=True, stable=True)[:k].tolist()
            result.append([(int(positions[j]), names[int(positions[j])], float(values[j])) for j in order])
        return result

    def _compact(self) -> tuple[list[list[str]], Tensor]:
        """The non-padding tokens of each example and their scores, left-aligned ``(N, max length)``."""
        rows = self._rows()
        width = max(len(names) for names, _ in rows)
        values = self.scores.new_zeros(len(rows), width)
        for i, (_, row) in enumerate(rows):
            values[i, : row.shape[0]] = row
        return [names for names, _ in rows], values

    def to_html(self, **options: Any) -> str:
        """The texts with tokens coloured by score (diverging, sign-aware), one line per example, as HTML.

        Options go to :func:`attrib.viz.text.tokens_html` (``normalization``, ``title``, ...).
        """
        from ..viz.text import tokens_html

        return tokens_html(*self._compact(), **options)

    def to_ansi(self, **options: Any) -> str:
        """The texts with tokens coloured by score for a terminal (ANSI escapes), one line per example."""
        from ..viz.text import tokens_ansi

        return tokens_ansi(*self._compact(), **options)


@dataclass(frozen=True)
class GenerationScores:
    """Attributions of a continuation's log-probabilities to the prompt's tokens (or template fields).

    Attributes:
        matrix: ``(T, P)``: entry ``[t, p]`` attributes :math:`\\log p(y_t \\mid x, y_{<t})`
            to prompt feature ``p`` (0 at frozen special tokens).
        total: ``(P,)``: the attribution of :math:`\\sum_t \\log p(y_t \\mid x, y_{<t})`,
            the whole continuation's log-probability; ``matrix.sum(0)`` for
            methods linear in the score.
        log_probs: ``(T,)`` the clean log-probability of each target token.
        target_ids: ``(T,)`` the continuation's ids.
        prompt_ids: ``(P,)`` the prompt's ids (None for a template prompt).
        prompt_tokens: the prompt's token strings (the field values for a template).
        target_tokens: the continuation's token strings.
        method: the name of the method.
    """

    matrix: Tensor
    total: Tensor
    log_probs: Tensor
    target_ids: Tensor
    prompt_ids: Tensor | None
    prompt_tokens: list[str]
    target_tokens: list[str]
    method: str

    def heatmap(self, path: str | Path, **options: Any) -> Path:
        """Write the target x prompt matrix as a PNG heat map (rows: target tokens, columns: prompt tokens).

        Delegates to :func:`attrib.viz.text.save_matrix` (matplotlib, an optional extra); returns the path.
        """
        from ..viz.text import save_matrix

        return save_matrix(path, self.matrix, self.target_tokens, self.prompt_tokens, **options)

    def to_html(self, **options: Any) -> str:
        """The prompt coloured by :attr:`total`, as HTML."""
        from ..viz.text import tokens_html

        return tokens_html(self.prompt_tokens, self.total, **options)

    def to_ansi(self, **options: Any) -> str:
        """The prompt coloured by :attr:`total`, for a terminal."""
        from ..viz.text import tokens_ansi

        return tokens_ansi(self.prompt_tokens, self.total, **options)
