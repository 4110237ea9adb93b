"""Pictures of attribution maps: overlays on their images and grids of several methods, written as PNG.

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

__all__ = ["NORMALIZATIONS", "as_2d", "as_rgb", "colorize", "normalize_map", "overlay", "save_grid", "save_overlay"]
