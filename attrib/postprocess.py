"""Post-processing steps: turning raw attributions into viewable maps.

Each step maps a block of maps ``(M, C, *spatial)`` to new maps; it also
receives the input the maps belong to (``reference``, ``(N, C, *spatial)``) so
that, e.g., :class:`Resize` can match its size. Chain steps after a method
with ``method.then(step, ...)``:

    >>> heat = attrib.Saliency(model).then(
    ...     attrib.ReduceChannels("abs_max"), attrib.GaussianSmooth(0.02), attrib.MinMaxNormalize())

Steps see one map per row: for an ``(N, K)`` target the ``N * K`` maps are
processed as a batch and reshaped back.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from .perturb.blur import gaussian_blur

REDUCTIONS = ("abs_max", "sum", "abs_sum", "l2", "positive")


class Step(ABC):
    """One post-processing step: ``maps (M, C, *spatial) -> maps``."""

    @abstractmethod
    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        """Process ``maps``; ``reference`` is the input they explain."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _check_spatial(maps: Tensor, step: str) -> None:
    if maps.dim() < 3:
        raise ValueError(f"{step} needs maps of shape (N, C, *spatial), got shape {tuple(maps.shape)}")


class ReduceChannels(Step):
    r"""Collapse the channel dimension (dim 1) to size 1.

    * ``"abs_max"``: :math:`\max_c |a_c|` (TorchRay's default for gradients)
    * ``"sum"``: :math:`\sum_c a_c`
    * ``"abs_sum"``: :math:`\sum_c |a_c|` (FastEstimator's)
    * ``"l2"``: :math:`\sqrt{\sum_c a_c^2}`
    * ``"positive"``: :math:`\max(\sum_c a_c, 0)` (the positive part, as in Grad-CAM)

    Shapes: ``(M, C, *spatial) -> (M, 1, *spatial)``.
    """

    def __init__(self, kind: str = "abs_max") -> None:
        if kind not in REDUCTIONS:
            raise ValueError(f"kind must be one of {', '.join(REDUCTIONS)}; got {kind!r}")
        self.kind = kind

    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        if maps.dim() < 2:
            raise ValueError(f"ReduceChannels needs maps of shape (N, C, ...), got shape {tuple(maps.shape)}")
        if self.kind == "abs_max":
            return maps.abs().amax(1, keepdim=True)
        if self.kind == "sum":
            return maps.sum(1, keepdim=True)
        if self.kind == "abs_sum":
            return maps.abs().sum(1, keepdim=True)
        if self.kind == "l2":
            return maps.square().sum(1, keepdim=True).sqrt()
        return maps.sum(1, keepdim=True).clamp(min=0)


_INTERPOLATION_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")


class Resize(Step):
    """Resample maps to the reference input's spatial size, or to ``size``.

    ``size`` is ``(height, width)`` (torch's order; TorchRay's ``resize``
    takes ``(width, height)``). ``mode`` is any ``F.interpolate`` mode.
    Shapes: ``(M, C, H, W) -> (M, C, *size)``.
    """

    def __init__(self, size: tuple[int, ...] | None = None, mode: str = "bilinear") -> None:
        if size is not None and not (
            isinstance(size, (tuple, list)) and all(isinstance(s, numbers.Integral) and s > 0 for s in size)
        ):
            raise ValueError(f"size must be None or a tuple of positive ints (height, width), got {size!r}")
        if mode not in _INTERPOLATION_MODES:
            raise ValueError(f"mode must be one of {', '.join(_INTERPOLATION_MODES)}; got {mode!r}")
        self.size = None if size is None else tuple(int(s) for s in size)
        self.mode = mode

    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        _check_spatial(maps, "Resize")
        size = self.size if self.size is not None else tuple(reference.shape[2:])
        if len(size) != maps.dim() - 2:
            raise ValueError(f"Resize to {size} does not match maps with {maps.dim() - 2} spatial dimensions")
        if tuple(maps.shape[2:]) == size:
            return maps
        corners = False if self.mode in ("linear", "bilinear", "bicubic", "trilinear") else None
        return F.interpolate(maps, size=size, mode=self.mode, align_corners=corners)


class GaussianSmooth(Step):
    r"""Gaussian blur with standard deviation ``sigma * max(H, W)`` pixels.

    As TorchRay's ``smooth``: ``sigma`` is a fraction of the map's larger
    side; the kernel is truncated at :math:`\lceil 4\sigma \rceil` pixels,
    normalised to sum to one, applied separably per channel with replicated
    borders. ``sigma = 0`` is the identity. Shapes are kept.
    """

    def __init__(self, sigma: float) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or sigma < 0:
            raise ValueError(f"sigma must be a non-negative number (a fraction of the map size), got {sigma!r}")
        self.sigma: float = float(sigma)

    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        _check_spatial(maps, "GaussianSmooth")
        if maps.dim() != 4:
            raise ValueError(f"GaussianSmooth needs 2-D maps (M, C, H, W), got shape {tuple(maps.shape)}")
        return gaussian_blur(maps, self.sigma * max(maps.shape[2:]), padding="replicate")


class MinMaxNormalize(Step):
    r"""Scale each map to ``[0, 1]``: :math:`(a - \min a) / (\max a - \min a)`, 0 for a constant map."""

    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        flat = maps.reshape(maps.shape[0], -1)
        low = flat.amin(1, keepdim=True)
        span = flat.amax(1, keepdim=True) - low
        scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1), torch.zeros_like(flat))
        return scaled.view_as(maps)


class PercentileClip(Step):
    r"""FastEstimator's visual normalisation: :math:`\mathrm{clip}((a - \min a)/(p_q(a) - \min a), 0, 1)`.

    :math:`p_q` is the ``q``-th percentile of each map (linear
    interpolation, as ``numpy.percentile``); values above it saturate at 1.
    A map with :math:`p_q = \min` becomes 0. Shapes are kept.
    """

    def __init__(self, q: float = 99.0) -> None:
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 100:
            raise ValueError(f"q must be a percentile in [0, 100], got {q!r}")
        self.q: float = float(q)

    def __call__(self, maps: Tensor, reference: Tensor) -> Tensor:
        flat = maps.reshape(maps.shape[0], -1)
        low = flat.amin(1, keepdim=True)
        high = torch.quantile(flat, self.q / 100.0, dim=1, keepdim=True)
        span = high - low
        scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1), torch.zeros_like(flat))
        return scaled.clamp(0, 1).view_as(maps)
