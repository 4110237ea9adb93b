"""PNG files: one overlay, or a grid of images by methods (matplotlib's object API, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .colour import as_rgb, overlay, require_matplotlib


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_overlay(path: str | Path, image: Tensor, heatmap: Tensor, *, title: str | None = None, dpi: int = 100,
                 **options: Any) -> Path:
    """Write one overlay (see :func:`attrib.viz.overlay`, which takes ``options``) as a PNG; returns the path."""
    figure = _figure(3.2, 3.4 if title else 3.2)
    ax = figure.add_axes((0.02, 0.02, 0.96, 0.86 if title else 0.96))
    ax.imshow(overlay(image, heatmap, **options).numpy(), interpolation="bilinear")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    out = Path(path)
    figure.savefig(out, format="png", dpi=dpi)
    return out


def save_grid(
    path: str | Path,
    images: Tensor | Sequence[Tensor],
    maps: Mapping[str, Tensor],
    *,
    image_titles: Sequence[str] | None = None,
    subtitles: Mapping[str, str | Sequence[str]] | None = None,
    masks: Tensor | None = None,
    max_columns: int | None = None,
    cell: float = 1.45,
    dpi: int = 100,
    **options: Any,
) -> Path:
    """Write a grid as a PNG: for each image, the image itself, then one overlay per method.

    Each image's cells fill a block of rows of at most ``max_columns`` cells (default: one row
    per image); every overlay is titled with its method (and ``subtitles[method]``).

    Args:
        path: the PNG file to write.
        images: ``(N, 3, H, W)`` in ``[0, 1]`` (or a sequence of ``(3, H, W)``).
        maps: method title -> ``(N, 1, h, w)`` maps (or ``(N, h, w)``), in display order.
        image_titles: a title for each image (e.g. the class explained).
        subtitles: method title -> a second title line (e.g. the time per map), or one line per image.
        masks: optional ``(N, H, W)`` bool ground truth, outlined in white on the image cell.
        max_columns: the most cells in a row.
        options: passed to :func:`attrib.viz.overlay` (``normalization``, ``cmap``, ``alpha``, ``q``).

    Returns:
        the path written.
    """
    n = len(images)
    if n == 0:
        raise ValueError("save_grid needs at least one image")
    for title, m in maps.items():
        if len(m) != n:
            raise ValueError(f"maps[{title!r}] has {len(m)} maps for {n} images")
    if image_titles is not None and len(image_titles) != n:
        raise ValueError(f"image_titles has {len(image_titles)} entries for {n} images")
    cells = 1 + len(maps)
    columns = cells if max_columns is None else max(1, min(int(max_columns), cells))
    block = -(-cells // columns)
    rows = n * block
    title_space = 0.34
    figure = _figure(cell * columns, (cell + title_space) * rows)
    grid = figure.add_gridspec(rows, columns, left=0.004, right=0.996, bottom=0.004, top=1 - title_space / (
        (cell + title_space) * rows), wspace=0.05, hspace=title_space / cell)
    titles = list(maps)
    for i in range(n):
        for k in range(cells):
            ax = figure.add_subplot(grid[i * block + k // columns, k % columns])
            ax.set_axis_off()
            if k == 0:
                ax.imshow(as_rgb(images[i]).numpy(), interpolation="bilinear")
                if masks is not None:
                    ax.contour(masks[i].float().cpu().numpy(), levels=[0.5], colors="white", linewidths=0.8)
                ax.set_title(image_titles[i] if image_titles is not None else "image", fontsize=7.5, pad=2,
                             fontweight="bold")
                continue
            title = titles[k - 1]
            ax.imshow(overlay(images[i], maps[title][i], **options).numpy(), interpolation="bilinear")
            sub = (subtitles or {}).get(title)
            if sub is not None and not isinstance(sub, str):
                sub = sub[i]
            ax.set_title(f"{title}\n{sub}" if sub else title, fontsize=7, pad=2)
    out = Path(path)
    figure.savefig(out, format="png", dpi=dpi)
    return out
