"""Pictures of attribution maps: overlays on their images and grids of several methods, written as PNG;
tokens coloured by their scores (HTML, ANSI) and heat maps of token-by-token matrices.

Normalisation (:func:`normalize_map`): ``"minmax"``, ``"percentile"`` (the
top percent saturates) and ``"signed"`` (zero stays zero, drawn with a
diverging colour map). Drawing needs matplotlib, an optional extra
(``pip install 'attrib[viz]'``); it is imported only when a colour is needed.

Example:
    >>> from attrib.viz import save_grid
    >>> save_grid("maps.png", images, {"Grad-CAM": cam_maps, "RISE": rise_maps})
"""

from .colour import NORMALIZATIONS, as_2d, as_rgb, colorize, normalize_map, overlay
from .figure import save_grid, save_overlay
from .text import diverging_rgb, matrix_figure_size, save_matrix, tokens_ansi, tokens_html

__all__ = [
    "NORMALIZATIONS",
    "as_2d",
    "as_rgb",
    "colorize",
    "diverging_rgb",
    "matrix_figure_size",
    "normalize_map",
    "overlay",
    "save_grid",
    "save_matrix",
    "save_overlay",
    "tokens_ansi",
    "tokens_html",
]
