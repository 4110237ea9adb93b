"""Turning maps into colours: normalisation and colour maps (matplotlib's, imported lazily)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

NORMALIZATIONS = ("minmax", "percentile", "signed")


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("attrib.viz draws with matplotlib, an optional extra: pip install 'attrib[viz]'") from None
    return matplotlib


def as_2d(heatmap: Tensor) -> Tensor:
    """One map as ``(H, W)`` float32 on the CPU, from ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``."""
    if not isinstance(heatmap, Tensor):
        raise TypeError(f"a map must be a Tensor, got {type(heatmap).__name__}")
    squeezed = heatmap.detach()
    while squeezed.dim() > 2 and squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    if squeezed.dim() != 2:
        raise ValueError(f"expected one 2-D map (H, W), (1, H, W) or (1, 1, H, W), got shape {tuple(heatmap.shape)}")
    return squeezed.float().cpu()


def as_rgb(image: Tensor) -> Tensor:
    """One image as ``(H, W, 3)`` float32 in ``[0, 1]`` on the CPU, from ``(3, H, W)``, ``(1, 3, H, W)`` or grey."""
    if not isinstance(image, Tensor):
        raise TypeError(f"an image must be a Tensor, got {type(image).__name__}")
    x = image.detach().float().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (3, H, W), (1, 3, H, W) or (H, W), got shape {tuple(image.shape)}")
    return x.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1)


def normalize_map(heatmap: Tensor, mode: str = "minmax", *, q: float = 99.0) -> Tensor:
    r"""Scale one map for display.

    * ``"minmax"``: :math:`(a - \min a) / (\max a - \min a)` in ``[0, 1]``.
    * ``"percentile"``: :math:`\mathrm{clip}((a - \min a) / (p_q(a) - \min a), 0, 1)`: the top
      ``100 - q`` percent saturate, so one hot pixel does not wash out the rest.
    * ``"signed"``: :math:`\mathrm{clip}(a / p_q(|a|), -1, 1)` in ``[-1, 1]``, zero kept at zero
      (for a diverging colour map).

    A constant map becomes zeros; NaNs become zeros. Shapes: ``(H, W) -> (H, W)``.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {mode!r}")
    if not 0 < q <= 100:
        raise ValueError(f"q must be a percentile in (0, 100], got {q!r}")
    a = torch.nan_to_num(as_2d(heatmap), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "signed":
        scale = torch.quantile(a.abs().flatten(), q / 100.0)
        return (a / scale).clamp(-1, 1) if scale > 0 else torch.zeros_like(a)
    low = a.min()
    high = a.max() if mode == "minmax" else torch.quantile(a.flatten(), q / 100.0)
    if high <= low:
        return torch.zeros_like(a)
    return ((a - low) / (high - low)).clamp(0, 1)


def colorize(values: Tensor, cmap: str = "jet", *, signed: bool = False) -> Tensor:
    """Colours ``(H, W, 3)`` in ``[0, 1]`` of normalised values ``(H, W)`` (in ``[-1, 1]`` if ``signed``)."""
    matplotlib = require_matplotlib()
    try:
        colours = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}") from None
    unit = (values + 1) / 2 if signed else values
    rgba = colours(unit.clamp(0, 1).numpy())
    return torch.from_numpy(rgba[..., :3]).float()


def overlay(
    image: Tensor,
    heatmap: Tensor,
    *,
    normalization: str = "minmax",
    cmap: str | None = None,
    alpha: float = 0.5,
    q: float = 99.0,
) -> Tensor:
    """The heat map drawn over its image: ``(H, W, 3)`` in ``[0, 1]``.

    The map is resized (bilinear) to the image, normalised (see :func:`normalize_map`), coloured
    with ``cmap`` (default ``"jet"``, or ``"RdBu_r"`` for ``normalization="signed"``) and blended:
    ``(1 - alpha) * image + alpha * colour``.

    Example:
        >>> rgb = overlay(images[0], maps[0])            # (64, 64, 3)
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    rgb = as_rgb(image)
    a = as_2d(heatmap)
    if a.shape != rgb.shape[:2]:
        size = tuple(rgb.shape[:2])
        a = torch.nn.functional.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    signed = normalization == "signed"
    colour = colorize(normalize_map(a, normalization, q=q), cmap or ("RdBu_r" if signed else "jet"), signed=signed)
    return (1 - alpha) * rgb + alpha * colour
