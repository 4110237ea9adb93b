"""Feature masks for images: grid cells and superpixels, as integer ids for ``feature_mask=``.

Both give ids that :func:`attrib.core.features.as_feature_groups` reads:
:func:`grid_mask` one mask ``(1, 1, H, W)`` shared by the batch and the
channels, :func:`superpixel_mask` one mask per image ``(N, 1, H, W)``.
"""

from __future__ import annotations

import importlib
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_VISION_HINT = "install the vision extra (pip install 'attrib[vision]', which brings scikit-image)"


def grid_mask(shape: Sequence[int], cell: int | Sequence[int], *, device: torch.device | str | None = None) -> Tensor:
    """Ids of ``cell``-sized rectangles tiling an ``(H, W)`` image, row-major: ``(1, 1, H, W)`` long.

    Pixel ``(y, x)`` gets ``(y // ch) * ceil(W / cw) + x // cw`` for a cell
    of ``ch x cw`` pixels (``cell`` an int for squares); cells at the bottom
    and right border are cut off when the size does not divide evenly.

    Example:
        >>> grid_mask((4, 6), (2, 3))[0, 0]
        tensor([[0, 0, 0, 1, 1, 1],
                [0, 0, 0, 1, 1, 1],
                [2, 2, 2, 3, 3, 3],
                [2, 2, 2, 3, 3, 3]])

    Raises:
        ValueError: ``shape`` is not two positive ints or ``cell`` not one or two positive ints.
    """
    size = _positive_ints(shape, 2, "shape")
    cells = _positive_ints([cell, cell] if _is_int(cell) else cell, 2, "cell")
    (height, width), (ch, cw) = size, cells
    across = -(-width // cw)
    rows = torch.arange(height, device=device) // ch
    cols = torch.arange(width, device=device) // cw
    return (rows.unsqueeze(1) * across + cols.unsqueeze(0)).view(1, 1, height, width)


def superpixel_mask(
    images: Tensor,
    n_segments: int = 100,
    *,
    compactness: float = 10.0,
    backend: str = "skimage",
    n_iter: int = 10,
    **slic_options: Any,
) -> Tensor:
    r"""SLIC superpixels (Achanta et al., 2012) of each image: ids ``(N, 1, H, W)`` long, per example.

    ``backend="skimage"`` (default) calls ``skimage.segmentation.slic`` on
    each image (moved to the CPU as ``(H, W, C)``, with ``start_label=0`` and
    ``slic_options`` passed on; RGB images are converted to Lab, so pass
    unnormalised ``[0, 1]`` images). It needs scikit-image (the ``vision``
    extra) and is a loop over images on the CPU: prepare masks once, not per
    call.

    ``backend="torch"`` is a small dependency-free SLIC on the images' device,
    batched over images: the values of each image are scaled to ``[0, 100]``
    (about Lab's lightness range, so ``compactness`` trades colour against
    space as in scikit-image), ``K ~ n_segments`` centres start on a regular
    grid of step :math:`S = \sqrt{HW / K}`, and ``n_iter`` rounds of k-means
    in the joint space :math:`(c, \tfrac{m}{S} y, \tfrac{m}{S} x)` assign
    each pixel to the nearest of the 3x3 centres around its grid cell. It
    does *not* convert to Lab, smooth, or enforce connectivity as
    scikit-image does, so a segment may be split in pieces and results differ
    from the skimage backend.

    Ids are centre numbers: they may have gaps (``as_feature_groups``
    renumbers them), and differ per image.

    scikit-image merges segments smaller than a fraction of the expected size
    (``enforce_connectivity``), so on noise or on images outside ``[0, 1]`` it
    can return a single segment; when an image gets fewer than a quarter of
    ``n_segments`` a ``UserWarning`` says so (a method would then explain one
    feature spread over the whole image). Lower ``compactness``, pass
    ``[0, 1]`` images, or use ``backend="torch"``.

    Raises:
        ImportError: ``backend="skimage"`` without scikit-image (the message names the extra).
        ValueError: images not ``(N, C, H, W)``, or bad ``n_segments``/``backend``/``n_iter``.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, C, H, W), got {shape}")
    if not _is_int(n_segments) or n_segments < 1:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    if backend == "skimage":
        ids = _skimage_slic(images, int(n_segments), float(compactness), slic_options)
        _warn_if_merged(ids, int(n_segments))
        return ids
    if backend == "torch":
        if slic_options:
            raise ValueError(f"backend='torch' takes no scikit-image options, got {sorted(slic_options)}")
        if not _is_int(n_iter) or n_iter < 0:
            raise ValueError(f"n_iter must be a non-negative int, got {n_iter!r}")
        return _torch_slic(images, int(n_segments), float(compactness), int(n_iter))
    raise ValueError(f"backend must be 'skimage' or 'torch', got {backend!r}")


def _warn_if_merged(ids: Tensor, n_segments: int) -> None:
    """Warn when scikit-image returned far fewer segments than asked for some image."""
    counts = [int(image.unique().numel()) for image in ids]  # masks are made once, on the CPU: a loop is fine
    fewest = min(counts)
    if fewest * 4 < n_segments:
        warnings.warn(
            f"superpixel_mask asked for {n_segments} segments but scikit-image returned as few as {fewest} for an "
            "image (its connectivity step merges small segments, e.g. on noise or on values outside [0, 1]); "
            "lower compactness, pass [0, 1] images, or use backend='torch'",
            UserWarning,
            stacklevel=3,
        )


def _skimage_slic(images: Tensor, n_segments: int, compactness: float, options: dict[str, Any]) -> Tensor:
    try:
        slic = importlib.import_module("skimage.segmentation").slic
    except ImportError as error:
        raise ImportError(
            f"superpixel_mask(backend='skimage') needs scikit-image: {_VISION_HINT}, "
            "or pass backend='torch' for the dependency-free SLIC"
        ) from error
    channels = images.shape[1]
    pixels = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    labels = [
        torch.as_tensor(
            slic(
                image if channels > 1 else image[..., 0],
                n_segments=n_segments,
                compactness=compactness,
                start_label=0,
                channel_axis=-1 if channels > 1 else None,
                **options,
            )
        )
        for image in pixels
    ]
    return torch.stack(labels).to(device=images.device, dtype=torch.long).unsqueeze(1)


def _torch_slic(images: Tensor, n_segments: int, compactness: float, n_iter: int) -> Tensor:
    n, _, height, width = images.shape
    device = images.device
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.detach().to(dtype)
    low = x.amin((1, 2, 3), keepdim=True)
    span = (x.amax((1, 2, 3), keepdim=True) - low).clamp_min(torch.finfo(dtype).tiny)
    colour = (x - low) / span * 100
    step = math.sqrt(height * width / n_segments)
    rows, cols = max(1, min(height, round(height / step))), max(1, min(width, round(width / step)))
    cell_y = torch.arange(height, device=device) * rows // height
    cell_x = torch.arange(width, device=device) * cols // width
    scale = compactness / step
    ys = (torch.arange(height, device=device, dtype=dtype) * scale).view(1, 1, height, 1).expand(n, 1, height, width)
    xs = (torch.arange(width, device=device, dtype=dtype) * scale).view(1, 1, 1, width).expand(n, 1, height, width)
    points = torch.cat([colour, ys, xs], 1).flatten(2)  # (N, D, HW): the joint space
    pixels = height * width
    candidates = torch.stack(
        [
            ((cell_y + dy).clamp(0, rows - 1) * cols).unsqueeze(1) + (cell_x + dx).clamp(0, cols - 1).unsqueeze(0)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
    ).view(9, pixels)  # the 3x3 grid cells around each pixel's own
    labels = candidates[4].expand(n, pixels)  # start: each pixel in its grid cell
    dims, centres = points.shape[1], rows * cols
    for round_ in range(n_iter + 1):
        sums = points.new_zeros(n, dims, centres).scatter_add_(2, labels.unsqueeze(1).expand(n, dims, pixels), points)
        counts = points.new_zeros(n, centres).scatter_add_(1, labels, points.new_ones(n, pixels))
        if round_ == n_iter:
            break
        means = sums / counts.clamp_min(1).unsqueeze(1)
        near = means.gather(2, candidates.view(1, 1, -1).expand(n, dims, -1)).view(n, dims, 9, pixels)
        distance = (points.unsqueeze(2) - near).square().sum(1)  # (N, 9, HW)
        empty = counts.gather(1, candidates.view(1, -1).expand(n, -1)).view(n, 9, pixels) == 0
        best = distance.masked_fill(empty, math.inf).argmin(1)  # a pixel's own centre is never empty
        labels = candidates.t().expand(n, pixels, 9).gather(2, best.unsqueeze(2)).squeeze(2)
    return labels.reshape(n, 1, height, width)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_ints(value: object, count: int, name: str) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or len(value) != count or not all(_is_int(v) and int(v) > 0 for v in value):
        raise ValueError(f"{name} must be {count} positive ints, got {value!r}")
    return tuple(int(v) for v in value)
