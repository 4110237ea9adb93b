"""The pointing game (Zhang et al., 2016), with TorchRay's acceptance rule and per-class accuracy."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Metric, map_images, per_example

#: Values within this many units in the last place (of the maps' dtype) below the maximum count as tied,
#: so that the rounding of resizing does not split a plateau.
TIE_ULPS = 4


def _as_masks(masks: object) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a boolean Tensor (N, H, W), got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must have shape (N, H, W) (or (N, 1, H, W)), got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a boolean tensor, got dtype {masks.dtype}; convert with masks.bool()")
    return masks


class PointingGame(Metric):
    r"""Pointing game: is a map's maximum on (or near) the object?

    For each example the map is resized to the mask's size (bilinear,
    ``align_corners=False``, as TorchRay's ``resize``), its maximum
    :math:`p = (v, u)` (row, column) is taken, and it is a **hit** when some
    mask pixel :math:`q` lies at Euclidean distance strictly less than
    ``tolerance`` pixels:

    .. math:: \mathrm{hit} = \exists q \in \mathrm{mask}:\ \lVert p - q \rVert_2^2 < \tau^2

    the boundary convention of TorchRay's ``PointingGame.evaluate`` (a mask
    pixel exactly ``tolerance`` pixels away does not count; ``tolerance=0``
    never hits).

    **Ties.** A piecewise-flat map (an extremal-perturbation mask) has many
    maxima. Among the maximal pixels (values within 4 units in the last
    place of the maximum after resizing, in float32 or the maps' float64, so
    that resizing's rounding does not split a plateau) the one nearest to
    their centroid is chosen: the centre of a convex plateau. Equally near
    candidates go to the first in raster order; when the maxima form
    several separate plateaus the point lies on the one nearest to their
    common centroid (on its side facing the others). TorchRay's benchmark
    script takes the first maximum in raster order (a plateau's top-left
    corner) and relies on smoothing the maps beforehand. Only the maximal
    pixels are gathered, so the cost is a few passes over the resized maps.

    **Coordinates.** Points are ``(row, column)`` in mask pixels; TorchRay's
    ``evaluate(mask, point)`` takes ``point = (u, v) = (column, row)``.

    **NaN.** A map with a NaN anywhere (after resizing) is a miss.

    Args:
        masks: boolean ``(N, H, W)`` object masks (``(N, 1, H, W)`` accepted).
        tolerance: the acceptance radius in pixels of the mask (15 in the
            benchmark of Zhang et al. and TorchRay), a non-negative number
            (``float("inf")``: any non-empty mask is hit).

    Calling it with maps ``(N, h, w)`` or ``(N, 1, h, w)`` returns hits
    ``(N,)`` (bool) on the maps' device (the masks are copied there once per
    call when they live elsewhere). Hits of several shards concatenate;
    :func:`pointing_game_accuracy` turns hits into TorchRay's summary.

    Raises:
        TypeError: masks not boolean, maps not a tensor, tolerance not a number.
        ValueError: masks not ``(N, H, W)``, maps not ``(N, [1,] h, w)`` or with
            another ``N``, a negative or NaN tolerance.

    Example:
        >>> game = PointingGame(masks, tolerance=15)      # masks (N, 224, 224) bool
        >>> hits = game(maps)                             # maps (N, 1, 14, 14)
        >>> pointing_game_accuracy(hits, classes).accuracy
    """

    higher_is_better = True

    def __init__(self, masks: Tensor, *, tolerance: float = 15) -> None:
        self.masks = _as_masks(masks)
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
            raise TypeError(f"tolerance must be a number of pixels, got {type(tolerance).__name__}")
        if not tolerance >= 0:  # NaN too
            raise ValueError(f"tolerance must be a non-negative number of pixels, got {tolerance!r}")
        self.tolerance: float = float(tolerance)

    def __repr__(self) -> str:
        return f"PointingGame(masks={tuple(self.masks.shape)}, tolerance={self.tolerance:g})"

    def points(self, maps: Tensor) -> Tensor:
        """The chosen maximum ``(N, 2)`` as ``(row, column)`` in mask pixels (long), on the maps' device.

        ``(-1, -1)`` for a map holding a NaN. Note the order: TorchRay's
        ``evaluate`` takes ``(u, v) = (column, row)``.
        """
        n, height, width = self.masks.shape
        images = map_images(maps, n)
        if images.shape[2:] != (height, width):
            images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        flat = images.flatten(1)  # (N, H * W)
        peak = flat.amax(1, keepdim=True)  # NaN for a map holding a NaN: no pixel passes the threshold
        rtol = TIE_ULPS * torch.finfo(flat.dtype).eps
        threshold = torch.where(peak.isinf(), peak, peak - rtol * peak.abs())
        # The maximal pixels are few (one per map unless there are plateaus): work on them alone.
        example, pixel = (flat >= threshold).nonzero(as_tuple=True)
        coords = torch.stack((pixel // width, pixel % width), dim=1).to(torch.float64)
        count = torch.zeros(n, dtype=torch.float64, device=flat.device).index_add_(
            0, example, torch.ones_like(coords[:, 0])
        )
        centroid = torch.zeros(n, 2, dtype=torch.float64, device=flat.device).index_add_(0, example, coords)
        centroid = centroid / count.clamp(min=1).unsqueeze(1)
        distance = (coords - centroid[example]).square().sum(1)
        nearest = torch.full((n,), float("inf"), dtype=torch.float64, device=flat.device).scatter_reduce_(
            0, example, distance, "amin"
        )
        # Among the nearest candidates the first in raster order (the smallest pixel index).
        candidate = torch.where(distance == nearest[example], pixel, flat.shape[1])
        best = torch.full((n,), flat.shape[1], dtype=torch.long, device=flat.device).scatter_reduce_(
            0, example, candidate, "amin"
        )
        chosen: Tensor = torch.stack((best // width, best % width), dim=1)
        return torch.where((best == flat.shape[1]).unsqueeze(1), -1, chosen)

    def __call__(self, maps: Tensor) -> Tensor:
        """Hits ``(N,)`` (bool) of ``maps`` ``(N, h, w)`` or ``(N, 1, h, w)``."""
        points = self.points(maps)
        return self.hits_at(points)

    def hits_at(self, points: Tensor) -> Tensor:
        """Hits ``(N,)`` of given points ``(N, 2)`` ``(row, column)`` (e.g. the image centre baseline).

        Points may be fractional: TorchRay's centre baseline is
        ``(H / 2, W / 2)``. A point with a negative coordinate (a NaN map) is a miss. Only the
        mask pixels inside the tolerance disc around each point are read
        (the whole mask when the disc is larger than the image).
        """
        n, height, width = self.masks.shape
        points = per_example(points, n, "points")
        if points.dim() != 2 or points.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) (row, column), got {tuple(points.shape)}")
        if points.dtype == torch.bool or points.is_complex():
            raise TypeError(f"points must be integer or floating pixel coordinates, got dtype {points.dtype}")
        device = points.device
        masks = self.masks.to(device)
        valid = (points >= 0).all(1)
        reach = math.ceil(min(self.tolerance, max(height, width)))
        offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)  # the disc, built on the host: no device sync
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        inside = dy.square() + dx.square() < self.tolerance**2
        dy, dx = dy.long(), dx.long()
        if points.is_floating_point() or int(inside.sum()) > height * width:
            return _hits_dense(masks, points.to(torch.float64), self.tolerance) & valid
        rows = points[:, :1].long() + dy[inside].to(device).unsqueeze(0)  # (N, disc)
        cols = points[:, 1:].long() + dx[inside].to(device).unsqueeze(0)
        on_image = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        index = rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)
        return (masks.flatten(1).gather(1, index) & on_image).any(1) & valid


def _hits_dense(masks: Tensor, points: Tensor, tolerance: float) -> Tensor:
    """Hits ``(N,)`` of (fractional) points ``(N, 2)``, testing the whole masks."""
    _, height, width = masks.shape
    rows = torch.arange(height, device=points.device, dtype=torch.float64).view(1, -1, 1)
    cols = torch.arange(width, device=points.device, dtype=torch.float64).view(1, 1, -1)
    distance2 = (rows - points[:, 0].view(-1, 1, 1)) ** 2 + (cols - points[:, 1].view(-1, 1, 1)) ** 2
    hits: Tensor = (masks & (distance2 < tolerance**2)).flatten(1).any(1)
    return hits


@dataclass(frozen=True)
class PointingGameAccuracy:
    """Pointing-game counts per class; sums, so results of shards add (``a + b``) or all-reduce.

    Attributes:
        hits: ``(C,)`` float64, the hits per class.
        total: ``(C,)`` float64, the (image, class) pairs per class.
        empty_classes: ``"skip"`` or ``"zero"`` (see :func:`pointing_game_accuracy`).
    """

    hits: Tensor
    total: Tensor
    empty_classes: str = "skip"

    @property
    def per_class(self) -> Tensor:
        """``(C,)`` hits / pairs per class; NaN for a class without pairs (0 with ``empty_classes="zero"``)."""
        if self.empty_classes == "zero":
            return self.hits / self.total.clamp(min=1)
        return torch.where(self.total > 0, self.hits / self.total.clamp(min=1), float("nan"))

    @property
    def accuracy(self) -> Tensor:
        """The mean over classes of the per-class accuracy (a 0-d tensor), TorchRay's benchmark number."""
        if self.empty_classes == "zero":
            return self.per_class.mean()
        return self.per_class.nanmean()

    def __add__(self, other: PointingGameAccuracy) -> PointingGameAccuracy:
        if not isinstance(other, PointingGameAccuracy):
            return NotImplemented
        if other.empty_classes != self.empty_classes:
            raise ValueError(f"cannot add counts with empty_classes={self.empty_classes!r} and {other.empty_classes!r}")
        if other.hits.shape != self.hits.shape:
            raise ValueError(f"cannot add counts over {self.hits.shape[0]} and {other.hits.shape[0]} classes")
        return PointingGameAccuracy(self.hits + other.hits, self.total + other.total, self.empty_classes)


def pointing_game_accuracy(
    hits: Tensor,
    classes: Tensor,
    difficult: Tensor | None = None,
    *,
    num_classes: int | None = None,
    empty_classes: str = "skip",
) -> PointingGameAccuracy:
    r"""Per-class pointing accuracy over (image, class) pairs, and its mean over classes.

    .. math:: \mathrm{acc}_c = \frac{\#\{\text{hits of class } c\}}{\#\{\text{pairs of class } c\}},
        \qquad \mathrm{accuracy} = \frac{1}{|\mathcal{C}|} \sum_{c \in \mathcal{C}} \mathrm{acc}_c

    as TorchRay's ``PointingGame.accuracy`` (the mean over classes, not over
    pairs). With ``difficult`` only the flagged pairs count (the "difficult"
    subset of Zhang et al.). ``empty_classes="skip"`` (default) averages over
    the classes that have pairs; ``"zero"`` counts a class without pairs as
    accuracy 0, as TorchRay does (the two agree when every class occurs).

    Args:
        hits: ``(P,)`` bool, one per (image, class) pair (from :class:`PointingGame`).
        classes: ``(P,)`` integer class of each pair.
        difficult: optional ``(P,)`` bool, the pairs in the difficult subset.
        num_classes: the number of classes ``C`` (default ``max(classes) + 1``).

    Example:
        >>> acc = pointing_game_accuracy(hits, classes, num_classes=20)
        >>> hard = pointing_game_accuracy(hits, classes, difficult=flags, num_classes=20)
        >>> float(acc.accuracy), acc.per_class
    """
    if empty_classes not in ("skip", "zero"):
        raise ValueError(f"empty_classes must be 'skip' or 'zero', got {empty_classes!r}")
    if not isinstance(hits, Tensor) or hits.dtype != torch.bool or hits.dim() != 1:
        raise TypeError("hits must be a 1-D boolean Tensor (one per (image, class) pair)")
    if not isinstance(classes, Tensor) or classes.shape != hits.shape or classes.is_floating_point():
        raise ValueError(f"classes must be an integer Tensor of the same shape as hits {tuple(hits.shape)}")
    classes = classes.to(device=hits.device, dtype=torch.long)
    if classes.numel() and bool((classes < 0).any()):
        raise ValueError("classes must be non-negative class indices")
    keep = torch.ones_like(hits)
    if difficult is not None:
        if not isinstance(difficult, Tensor) or difficult.dtype != torch.bool or difficult.shape != hits.shape:
            raise ValueError(f"difficult must be a boolean Tensor of the same shape as hits {tuple(hits.shape)}")
        keep = difficult.to(hits.device)
    if num_classes is None:
        num_classes = int(classes.max()) + 1 if classes.numel() else 0
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    if classes.numel() and int(classes.max()) >= num_classes:
        raise ValueError(f"classes must be below num_classes={num_classes}, got {int(classes.max())}")
    hit_counts = torch.zeros(num_classes, dtype=torch.float64, device=hits.device)
    totals = torch.zeros(num_classes, dtype=torch.float64, device=hits.device)
    hit_counts.index_add_(0, classes, (hits & keep).to(torch.float64))
    totals.index_add_(0, classes, keep.to(torch.float64))
    return PointingGameAccuracy(hit_counts, totals, empty_classes)
