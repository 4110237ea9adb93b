"""attrib.viz.text: tokens coloured by their scores (HTML, ANSI) and the PNG heat map of a token matrix."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from attrib.viz.text import diverging_rgb, matrix_figure_size, save_matrix, tokens_ansi, tokens_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SPAN = re.compile(r'<span title="([^"]*)" style="background-color: #([0-9a-f]{6}); color: #([0-9a-f]{6});[^"]*">'
                   r"(.*?)</span>")
_ANSI = re.compile(r"\x1b\[48;2;(\d+);(\d+);(\d+)m\x1b\[38;2;\d+;\d+;\d+m(.*?)\x1b\[0m")


def _spans(snippet: str) -> list[tuple[str, tuple[int, int, int], str]]:
    """``(tooltip, background rgb, text)`` of every token span."""
    out = []
    for tip, background, _, text in _SPAN.findall(snippet):
        rgb = (int(background[0:2], 16), int(background[2:4], 16), int(background[4:6], 16))
        out.append((tip, rgb, text))
    return out


def _ansi(text: str) -> list[tuple[tuple[int, int, int], str]]:
    return [((int(r), int(g), int(b)), t) for r, g, b, t in _ANSI.findall(text)]


def _palette_reference(value: float) -> tuple[float, float, float]:
    """Float64 loop from the definition: piecewise-linear through ColorBrewer RdBu, -1 blue to +1 red."""
    stops = [(5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
             (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31)]
    x = (min(max(value, -1.0), 1.0) + 1) / 2 * 10
    i = min(int(x), 9)
    f = x - i
    r, g, b = (stops[i][c] * (1 - f) + stops[i + 1][c] * f for c in range(3))
    return r, g, b


def test_diverging_palette_matches_its_definition() -> None:
    values = torch.linspace(-1.2, 1.2, 97, dtype=torch.float64)
    rgb = diverging_rgb(values)
    assert rgb.dtype == torch.uint8 and rgb.shape == (97, 3)
    for v, got in zip(values.tolist(), rgb.tolist()):
        expected = _palette_reference(v)
        assert all(abs(g - e) <= 0.5 + 1e-9 for g, e in zip(got, expected)), (v, got, expected)
    assert diverging_rgb(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [[5, 48, 97], [247, 247, 247], [103, 0, 31]]


def test_html_escapes_tokens_title_and_tooltips() -> None:
    tokens = ["<script>", 'a"b', "&amp;", "x'y"]
    snippet = tokens_html(tokens, torch.tensor([1.0, -1.0, 0.5, 0.0]), title="<b>title</b>")
    assert "<script>" not in snippet and "<b>title" not in snippet
    assert "&lt;b&gt;title&lt;/b&gt;" in snippet
    spans = _spans(snippet)
    assert [text for _, _, text in spans] == ["&lt;script&gt;", "a&quot;b", "&amp;amp;", "x&#x27;y"]
    assert spans[1][0] == "a&quot;b: -1"  # the raw value in the tooltip, the quote escaped
    assert spans[0][0] == "&lt;script&gt;: +1"
    assert snippet.count("<span") == len(tokens) and snippet.count("</span>") == len(tokens)


def test_colours_follow_sign_and_magnitude() -> None:
    scores = torch.tensor([-2.0, -1.0, -0.25, 0.0, 0.25, 1.0, 2.0])
    tokens = [f"t{i}" for i in range(len(scores))]
    spans = _spans(tokens_html(tokens, scores))
    colours = [rgb for _, rgb, _ in spans]
    assert colours[3] == (247, 247, 247)  # zero is the palette's white
    for (r, _, b), s in zip(colours, scores.tolist()):
        if s > 0:
            assert r > b
        if s < 0:
            assert b > r
    brightness = [sum(c) for c in colours]
    assert brightness[0] < brightness[1] < brightness[2] < brightness[3]  # darker as |s| grows
    assert brightness[6] < brightness[5] < brightness[4] < brightness[3]
    assert colours[0] == (5, 48, 97) and colours[6] == (103, 0, 31)  # the largest |s| saturates
    # ANSI draws the same colours in the same order
    assert [rgb for rgb, _ in _ansi(tokens_ansi(tokens, scores))] == colours


@given(
    st.lists(st.floats(-100, 100, allow_nan=False, allow_subnormal=False), min_size=1, max_size=12),
    st.floats(0.01, 1000),
)
def test_signed_colours_ignore_positive_scale(values: list[float], factor: float) -> None:
    tokens = [f"w{i}" for i in range(len(values))]
    scores = torch.tensor(values, dtype=torch.float64)
    base = [rgb for _, rgb, _ in _spans(tokens_html(tokens, scores))]
    scaled = [rgb for _, rgb, _ in _spans(tokens_html(tokens, scores * factor))]
    # colours are 8-bit: rounding may move a channel by one step
    assert all(max(abs(a - b) for a, b in zip(x, y)) <= 1 for x, y in zip(base, scaled))


def test_unsigned_normalisations_use_the_red_half() -> None:
    spans = _spans(tokens_html(["a", "b", "c"], torch.tensor([-3.0, -1.0, 1.0]), normalization="minmax"))
    colours = [rgb for _, rgb, _ in spans]
    assert colours[0] == (247, 247, 247) and colours[2] == (103, 0, 31)
    assert colours[1][0] > colours[1][2]


def test_nan_scores_are_grey_and_leave_the_others_alone() -> None:
    tokens = ["a", "b", "c"]
    with_nan = _spans(tokens_html(tokens, torch.tensor([1.0, float("nan"), -0.5])))
    without = _spans(tokens_html(["a", "c"], torch.tensor([1.0, -0.5])))
    assert with_nan[1][1] == (224, 224, 224) and with_nan[1][0] == "b: nan"
    assert [with_nan[0][1], with_nan[2][1]] == [without[0][1], without[1][1]]
    plain = tokens_ansi(tokens, [1.0, float("nan"), -0.5], colour=False)
    assert plain == "a[+1] b[nan] c[-0.5]"
    all_nan = tokens_html(["a"], [float("nan")])
    assert _spans(all_nan)[0][1] == (224, 224, 224)


def test_subword_markers_become_spacing() -> None:
    wordpiece = tokens_ansi(["[CLS]", "un", "##believ", "##able", "film", "[SEP]"], [0.0] * 6, colour=False)
    assert wordpiece == "[CLS][+0] un[+0]believ[+0]able[+0] film[+0] [SEP][+0]"
    bpe = tokens_ansi(["Hello", "\u0120world", "!", "\u010a"], [1.0, 2.0, 3.0, 4.0], colour=False)
    assert bpe == "Hello[+1] world[+2]![+3]\u21b5[+4]"
    sentencepiece = tokens_ansi(["\u2581The", "\u2581cat", "s"], [0.0] * 3, colour=False)
    assert sentencepiece == "The[+0] cat[+0]s[+0]"
    raw = tokens_ansi(["un", "##able"], [0.0, 0.0], colour=False, join_subwords=False)
    assert raw == "un[+0] ##able[+0]"
    spans = _spans(tokens_html(["Hello", "\u0120world"], [1.0, -1.0]))
    assert [t for _, _, t in spans] == ["Hello", "world"]
    assert spans[1][0] == "\u0120world: -1"  # the tooltip names the token as the tokenizer wrote it


def test_ansi_colour_switch_and_control_characters() -> None:
    coloured = tokens_ansi(["a", "b"], torch.tensor([1.0, -1.0]))
    assert coloured.count("\x1b[0m") == 2 and len(_ansi(coloured)) == 2
    plain = tokens_ansi(["a", "b"], torch.tensor([1.0, -1.0]), colour=False)
    assert "\x1b" not in plain and plain == "a[+1] b[-1]"
    hostile = tokens_ansi(["\x1b[2Jboom"], [1.0])
    assert hostile.count("\x1b") == 3  # background, foreground, reset: the token's own escape is written out
    assert "\\x1b[2Jboom" in hostile


def test_batches_draw_one_line_per_row_each_normalised_alone() -> None:
    scores = torch.tensor([[1.0, -1.0, 0.5, 0.0], [10.0, 0.0, -10.0, 0.0]])
    tokens = [["a", "b", "c"], ["d", "e", "f", "g"]]
    lines = tokens_ansi(tokens, scores, colour=False).split("\n")
    assert lines == ["a[+1] b[-1] c[+0.5]", "d[+10] e[+0] f[-10] g[+0]"]
    snippet = tokens_html(tokens, scores)
    spans = _spans(snippet)
    assert len(spans) == 7 and snippet.count("<div>") == 2
    assert spans[0][1] == spans[3][1] and spans[1][1] == spans[5][1]  # 1 and 10 are each row's maximum


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="3 tokens but 2 scores"):
        tokens_html(["a", "b", "c"], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="3 tokens but 4 scores"):
        tokens_ansi(["a", "b", "c"], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="2 sequences but scores has 3 rows"):
        tokens_html([["a"], ["b"]], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="row 1 has 3 tokens but only 2 scores"):
        tokens_html([["a"], ["b", "c", "d"]], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="1-D"):
        tokens_html(["a"], torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="normalization"):
        tokens_html(["a"], [1.0], normalization="zscore")
    with pytest.raises(TypeError, match="tokens must be"):
        tokens_html("abc", [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="tokens must be strings"):
        tokens_ansi([1, 2], [1.0, 2.0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="scores must be"):
        tokens_html(["a"], ["high"])  # type: ignore[list-item]


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize(("rows", "columns", "title"), [(1, 1, None), (3, 7, "target x prompt"), (12, 4, None)])
def test_save_matrix_writes_a_png_of_the_stated_size(tmp_path: Path, rows: int, columns: int,
                                                     title: str | None) -> None:
    g = torch.Generator().manual_seed(rows * 100 + columns)
    matrix = torch.randn(rows, columns, generator=g)
    matrix[0, 0] = float("nan")
    row_tokens = [f"\u0120tok{i}" for i in range(rows)]
    col_tokens = ["$" * (i % 3) + f"p{i}" for i in range(columns)]  # dollars would start mathtext if unescaped
    path = save_matrix(tmp_path / "m.png", matrix, row_tokens, col_tokens, title=title, dpi=80)
    width, height = matrix_figure_size(rows, columns, row_tokens, col_tokens, title=title is not None)
    got = _png_size(path)
    assert abs(got[0] - width * 80) <= 1 and abs(got[1] - height * 80) <= 1
    # more columns, wider by cell * dpi each; more rows, taller
    wider = _png_size(save_matrix(tmp_path / "w.png", torch.zeros(rows, columns + 2), row_tokens,
                                  col_tokens + ["p", "q"], title=title, dpi=80))
    assert abs(wider[0] - got[0] - 2 * 0.3 * 80) <= 1 and wider[1] == got[1]


def test_save_matrix_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="2-D"):
        save_matrix(tmp_path / "m.png", torch.zeros(3), ["a"], ["b"])
    with pytest.raises(ValueError, match="row_tokens must be 2 strings"):
        save_matrix(tmp_path / "m.png", torch.zeros(2, 3), ["a"], ["b", "c", "d"])
    with pytest.raises(ValueError, match="col_tokens must be 3 strings"):
        save_matrix(tmp_path / "m.png", torch.zeros(2, 3), ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="colour map"):
        save_matrix(tmp_path / "m.png", torch.zeros(1, 1), ["a"], ["b"], cmap="no-such-map")
    assert not (tmp_path / "m.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert "<span" in tokens_html(["a"], [1.0])  # the text renderings need no plotting library
    with pytest.raises(ImportError, match="attrib\\[viz\\]"):
        save_matrix(tmp_path / "m.png", torch.zeros(1, 1), ["a"], ["b"])
