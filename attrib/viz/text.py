"""Tokens coloured by their attribution: HTML for notebooks, ANSI for terminals, and a PNG heat map of a matrix.

Scores are normalised per sequence (see :func:`attrib.viz.normalize_map`;
``"signed"`` by default: :math:`s / \\max |s|`, zero stays white) and drawn
with a diverging palette, ColorBrewer's RdBu: positive red, negative blue,
the same colours as ``cmap="RdBu_r"`` in the image figures. The HTML and ANSI
renderings need no plotting library; :func:`save_matrix` needs matplotlib
(``pip install 'attrib[viz]'``).

Subword markers are drawn as text, not as symbols: ``"##ing"`` (WordPiece)
joins the token before it, ``"Ġword"`` (byte-level BPE) and ``"▁word"``
(SentencePiece) start a new word; in a sequence that uses ``Ġ``/``▁`` a
token without one continues the word before it. ``"Ċ"`` is a line break.

Example:
    >>> from attrib.viz import tokens_ansi, tokens_html
    >>> html = tokens_html(["the", "film", "was", "not", "good"], torch.tensor([0.0, 0.1, 0.0, -0.8, -0.6]))
    >>> print(tokens_ansi(["the", "film", "was", "not", "good"], [0.0, 0.1, 0.0, -0.8, -0.6]))
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .colour import NORMALIZATIONS, normalize_map, require_matplotlib
from .figure import _figure

Scores = Tensor | Sequence[float]

#: ColorBrewer RdBu (11 classes) from most negative to most positive: dark blue, white, dark red.
_PALETTE = torch.tensor(
    [
        [5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
        [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31],
    ],
    dtype=torch.float64,
)
_NAN_BACKGROUND = (224, 224, 224)
_WORD_MARKERS = ("\u0120", "\u2581")  # "Ġ" (byte-level BPE), "▁" (SentencePiece)
_CONTINUATION = "##"  # WordPiece


def diverging_rgb(values: Tensor) -> Tensor:
    """RGB colours ``(..., 3)`` (uint8) of values in ``[-1, 1]``: -1 dark blue, 0 near-white, +1 dark red.

    Linear interpolation between the 11 ColorBrewer RdBu colours; values are
    clipped to ``[-1, 1]``.
    """
    x = (values.to(torch.float64).clamp(-1, 1) + 1) / 2 * (len(_PALETTE) - 1)
    low = x.floor().long().clamp(max=len(_PALETTE) - 2)
    frac = (x - low).unsqueeze(-1)
    rgb = _PALETTE[low] * (1 - frac) + _PALETTE[low + 1] * frac
    return rgb.round().to(torch.uint8)


def _text_rgb(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``background`` (relative luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _rows(tokens: Sequence[str] | Sequence[Sequence[str]], scores: Scores) -> list[tuple[list[str], Tensor]]:
    """``(tokens, scores (T,) float64)`` per sequence, checked: one row for 1-D scores, ``N`` rows for 2-D."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a list of strings (or a list of such lists), got {type(tokens).__name__}")
    try:
        values = torch.as_tensor(scores.detach() if isinstance(scores, Tensor) else scores, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"scores must be a Tensor or a list of numbers, got {type(scores).__name__}") from None
    values = values.cpu()
    single = values.dim() == 1
    if single:
        batch: list[Sequence[str]] = [tokens]  # type: ignore[list-item]
        values = values.unsqueeze(0)
    elif values.dim() == 2:
        batch = list(tokens)
        if len(batch) != values.shape[0]:
            raise ValueError(f"tokens has {len(batch)} sequences but scores has {values.shape[0]} rows")
    else:
        raise ValueError(f"scores must be 1-D (T,) or 2-D (N, L), got shape {tuple(values.shape)}")
    rows = []
    for i, row in enumerate(batch):
        if isinstance(row, str) or not isinstance(row, Sequence) or not all(isinstance(t, str) for t in row):
            raise TypeError("tokens must be strings (a list of strings per row for 2-D scores)")
        if single and len(row) != values.shape[1]:
            raise ValueError(f"{len(row)} tokens but {values.shape[1]} scores: give one token per score")
        if len(row) > values.shape[1]:
            raise ValueError(f"row {i} has {len(row)} tokens but only {values.shape[1]} scores")
        rows.append((list(row), values[i, : len(row)]))
    return rows


def _normalised(values: Tensor, normalization: str, q: float) -> Tensor:
    """Values in ``[-1, 1]`` (signed) or ``[0, 1]``; NaN stays NaN (drawn apart)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    if values.numel() == 0:
        return values
    scaled = normalize_map(values.unsqueeze(0), normalization, q=q)[0].to(torch.float64)
    return torch.where(values.isnan(), float("nan"), scaled)


def _colours(values: Tensor, normalization: str, q: float) -> list[tuple[int, int, int] | None]:
    """Background colour of each value (None for NaN); unsigned normalisations use the red half."""
    unit = _normalised(values, normalization, q)
    rgb = diverging_rgb(torch.nan_to_num(unit, nan=0.0))
    return [None if math.isnan(u) else (int(c[0]), int(c[1]), int(c[2])) for u, c in zip(unit.tolist(), rgb)]


def _pieces(tokens: Sequence[str], join_subwords: bool) -> list[tuple[str, bool]]:
    """``(text to show, space before it)`` of each token, subword markers turned into spacing."""
    if not join_subwords:
        return [(t, i > 0) for i, t in enumerate(tokens)]
    bpe = any(t.startswith(_WORD_MARKERS) for t in tokens)
    out = []
    for i, token in enumerate(tokens):
        text, space = token, i > 0
        if token.startswith(_CONTINUATION) and len(token) > len(_CONTINUATION):
            text, space = token[len(_CONTINUATION):], False
        elif token.startswith(_WORD_MARKERS):
            text = token[1:]
        elif bpe:
            space = False
        for marker in _WORD_MARKERS:
            text = text.replace(marker, " ")
        out.append((text.replace("\u010a", "\n"), space))
    return out


def _value(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:+.4g}"


def tokens_html(
    tokens: Sequence[str] | Sequence[Sequence[str]],
    scores: Scores,
    *,
    normalization: str = "signed",
    q: float = 100.0,
    title: str | None = None,
    join_subwords: bool = True,
) -> str:
    """A self-contained HTML snippet: each token a ``<span>`` coloured by its score, the value in its tooltip.

    ``scores`` ``(T,)`` go with ``tokens`` (``T`` strings); for a batch,
    ``scores`` ``(N, L)`` go with ``N`` lists of tokens, row ``i`` drawing its
    first ``len(tokens[i])`` scores (padding beyond is not drawn), one line a
    row. Each row is normalised on its own (see the module docstring); a NaN
    score is drawn grey with ``nan`` in its tooltip. Tokens and the title are
    HTML-escaped; line breaks and spaces inside tokens are kept
    (``white-space: pre-wrap``). Display it in a notebook with
    ``IPython.display.HTML(tokens_html(...))``.

    Args:
        tokens: the tokens (or one list per row of 2-D scores).
        scores: ``(T,)`` or ``(N, L)``, a tensor or a list of numbers.
        normalization: ``"signed"`` (default, :math:`s / p_q(|s|)`), ``"minmax"`` or ``"percentile"``.
        q: the percentile of the scale (100: the largest value).
        title: a line above the tokens.
        join_subwords: read ``##``, ``Ġ`` and ``▁`` markers as spacing (see the module docstring).

    Raises:
        ValueError: tokens and scores of different lengths, scores not 1-D or 2-D, an unknown normalization.
        TypeError: tokens not strings, scores not numbers.

    Example:
        >>> from IPython.display import HTML
        >>> HTML(tokens_html(["not", "bad", "at", "all"], torch.tensor([0.7, 0.9, 0.0, -0.1]), title="positive"))
    """
    parts = ['<div class="attrib-tokens" style="font-family: monospace; line-height: 2;">']
    if title is not None:
        parts.append(f'<div style="font-weight: bold;">{html.escape(str(title))}</div>')
    for row, values in _rows(tokens, scores):
        spans = []
        for (text, space), token, value, colour in zip(
            _pieces(row, join_subwords), row, values.tolist(), _colours(values, normalization, q)
        ):
            background = colour or _NAN_BACKGROUND
            fg = _text_rgb(background)
            tip = html.escape(f"{token}: {_value(value)}", quote=True)
            spans.append(
                (" " if space else "")
                + f'<span title="{tip}" style="background-color: #{_hex(background)}; color: #{_hex(fg)}; '
                f'padding: 1px 2px; border-radius: 3px; white-space: pre-wrap;">{html.escape(text)}</span>'
            )
        parts.append(f"<div>{''.join(spans)}</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "".join(f"{c:02x}" for c in rgb)


def tokens_ansi(
    tokens: Sequence[str] | Sequence[Sequence[str]],
    scores: Scores,
    *,
    normalization: str = "signed",
    q: float = 100.0,
    colour: bool = True,
    join_subwords: bool = True,
) -> str:
    """The tokens with 24-bit ANSI background colours for a terminal, one line per row.

    Colours, normalisation, batches and subword handling as :func:`tokens_html`
    (NaN: grey). With ``colour=False`` (a pipe, ``NO_COLOR``) every token is
    followed by its score in brackets instead, e.g. ``not[+0.7] bad[+0.9]``.
    Control characters inside tokens are shown escaped (``\\x1b``), so a token
    cannot change the terminal's state.

    Example:
        >>> print(tokens_ansi(["not", "bad"], torch.tensor([0.7, 0.9])))
    """
    lines = []
    for row, values in _rows(tokens, scores):
        out = []
        for (text, space), value, bg in zip(_pieces(row, join_subwords), values.tolist(),
                                            _colours(values, normalization, q)):
            shown = _printable(text)
            if space:
                out.append(" ")
            if not colour:
                out.append(f"{shown}[{_value(value)}]")
                continue
            background = bg or _NAN_BACKGROUND
            fg = _text_rgb(background)
            out.append(f"\x1b[48;2;{';'.join(map(str, background))}m\x1b[38;2;{';'.join(map(str, fg))}m"
                       f"{shown}\x1b[0m")
        lines.append("".join(out))
    return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with control characters (escape, carriage return, ...) written as escapes; a newline as ``↵``."""
    return "".join("\u21b5" if ch == "\n" else (ch if ch.isprintable() or ch == " " else repr(ch)[1:-1])
                   for ch in text)


def _label(token: str) -> str:
    """A tick label: markers stripped, ``$`` escaped (no mathtext), line breaks visible."""
    text = token[1:] if token.startswith(_WORD_MARKERS) and len(token) > 1 else token
    return text.replace("\u010a", "\u21b5").replace("\n", "\u21b5").replace("$", r"\$")


#: Layout of :func:`save_matrix` in inches: per character of the longest label, label padding, colour bar.
_CHAR_IN, _LABEL_PAD_IN, _COLOURBAR_IN, _TITLE_IN, _EDGE_IN = 0.075, 0.35, 0.9, 0.35, 0.1


def matrix_figure_size(rows: int, columns: int, row_tokens: Sequence[str], col_tokens: Sequence[str], *,
                       cell: float = 0.3, title: bool = False) -> tuple[float, float]:
    """The ``(width, height)`` in inches of :func:`save_matrix`'s figure (pixels: times ``dpi``).

    ``width = left + cell * columns + colour bar``, ``height = title + cell * rows + bottom``, the left and
    bottom margins growing with the longest row and column label.
    """
    left = _LABEL_PAD_IN + _CHAR_IN * max((len(_label(t)) for t in row_tokens), default=0)
    bottom = _LABEL_PAD_IN + _CHAR_IN * max((len(_label(t)) for t in col_tokens), default=0)
    width = left + cell * columns + _COLOURBAR_IN
    height = (_TITLE_IN if title else _EDGE_IN) + cell * rows + bottom
    return width, height


def save_matrix(
    path: str | Path,
    matrix: Tensor | Sequence[Sequence[float]],
    row_tokens: Sequence[str],
    col_tokens: Sequence[str],
    *,
    title: str | None = None,
    cell: float = 0.3,
    dpi: int = 100,
    cmap: str = "RdBu_r",
) -> Path:
    """Write a heat map of a ``(rows, columns)`` matrix with token labels as a PNG; returns the path.

    Made for a generation explanation's ``(target_len, prompt_len)`` matrix:
    rows are the target tokens (top to bottom), columns the prompt tokens
    (left to right, labels turned 90 degrees). The colour scale is symmetric,
    :math:`[-m, m]` with :math:`m = \\max |a|` over the finite entries, so zero
    is white and the sign reads as red or blue; NaN cells are grey. Each cell
    is ``cell`` inches square; the figure's size in inches is
    :func:`matrix_figure_size` (times ``dpi`` in pixels).

    Args:
        path: the PNG file to write.
        matrix: ``(rows, columns)``, a tensor or nested lists of numbers.
        row_tokens: ``rows`` labels; col_tokens: ``columns`` labels.
        title: a line above the map.

    Raises:
        ValueError: the matrix is not 2-D or does not match the labels.
        ImportError: matplotlib is missing.

    Example:
        >>> save_matrix("generation.png", scores.matrix, scores.target_tokens, scores.prompt_tokens)
    """
    values = torch.as_tensor(matrix.detach() if isinstance(matrix, Tensor) else matrix, dtype=torch.float64).cpu()
    if values.dim() != 2:
        raise ValueError(f"matrix must be 2-D (rows, columns), got shape {tuple(values.shape)}")
    rows, columns = values.shape
    for name, labels, count in (("row_tokens", row_tokens, rows), ("col_tokens", col_tokens, columns)):
        if isinstance(labels, str) or len(labels) != count or not all(isinstance(t, str) for t in labels):
            raise ValueError(f"{name} must be {count} strings, one per matrix {name[:3]}, got {len(labels)}")
    if rows == 0 or columns == 0:
        raise ValueError(f"matrix must have at least one row and one column, got shape {tuple(values.shape)}")
    matplotlib = require_matplotlib()
    try:
        colours: Any = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}") from None
    width, height = matrix_figure_size(rows, columns, row_tokens, col_tokens, cell=cell, title=title is not None)
    finite = values[values.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    figure = _figure(width, height)
    left = width - cell * columns - _COLOURBAR_IN
    bottom = height - cell * rows - (_TITLE_IN if title is not None else _EDGE_IN)
    ax = figure.add_axes((left / width, bottom / height, cell * columns / width, cell * rows / height))
    image = ax.imshow(values.numpy(), cmap=colours, vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(columns), [_label(t) for t in col_tokens], rotation=90, fontsize=8)
    ax.set_yticks(range(rows), [_label(t) for t in row_tokens], fontsize=8)
    if title is not None:
        ax.set_title(title, fontsize=9)
    bar = figure.add_axes(((width - _COLOURBAR_IN + 0.15) / width, bottom / height, 0.12 / width,
                           cell * rows / height))
    figure.colorbar(image, cax=bar)
    bar.tick_params(labelsize=7)
    out = Path(path)
    figure.savefig(out, format="png", dpi=dpi)
    return out
