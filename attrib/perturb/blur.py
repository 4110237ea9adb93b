"""One separable Gaussian blur, shared by the perturbation pyramid, map smoothing and baselines."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

PADDINGS = ("zeros", "replicate", "reflect")


def gaussian_kernel(sigma: float, radius: int, *, device: torch.device | None = None) -> Tensor:
    r"""The normalised 1-D Gaussian :math:`g_i \propto \exp(-i^2 / 2\sigma^2)`, :math:`i = -r..r`, in float64.

    ``sigma = 0`` gives the unit impulse. Shape ``(2 * radius + 1,)``.
    """
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    if sigma == 0:
        return (offsets == 0).to(torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(
    images: Tensor, sigma: float | Tensor, *, truncate: float = 4.0, padding: str = "replicate"
) -> Tensor:
    r"""Blur the last two (spatial) dimensions of ``images`` with a Gaussian of standard deviation ``sigma`` pixels.

    .. math::
        (g_\sigma \ast x)_{vu} = \sum_{i,j=-r}^{r} g_i\, g_j\, x_{v+i,\,u+j},
        \qquad g_i = \frac{e^{-i^2/2\sigma^2}}{\sum_{k=-r}^{r} e^{-k^2/2\sigma^2}},
        \qquad r = \lceil \mathrm{truncate}\cdot\sigma \rceil

    applied separably (first down the rows, then along the columns), each
    channel on its own. The kernel sums to one exactly, so a constant image is
    unchanged away from ``"zeros"`` borders; ``sigma = 0`` is the identity.

    Args:
        images: ``(..., H, W)``: ``(N, C, H, W)`` images, a single ``(C, H, W)``
            image, or any leading dimensions; floating point.
        sigma: the standard deviation in pixels, a non-negative number, or a
            tensor ``(N,)`` with one value per entry of the first dimension of
            ``images`` (e.g. per image; each uses its own radius).
        truncate: the kernel radius in standard deviations (4, as TorchRay's
            ``imsmooth`` and scipy).
        padding: values beyond the border: ``"replicate"`` (the nearest
            pixel; default, as TorchRay's map smoothing), ``"zeros"`` (as
            TorchRay's ``imsmooth`` default and its blur pyramid) or
            ``"reflect"`` (needs a radius smaller than ``H`` and ``W``).

    Returns:
        The blurred images, same shape, dtype and device; differentiable with
        respect to ``images``.

    Example:
        >>> soft = gaussian_blur(images, 3.0)               # (N, C, H, W) -> (N, C, H, W)
        >>> levels = gaussian_blur(images, torch.tensor([0.0, 2.0, 8.0]), padding="zeros")
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor (..., H, W), got {type(images).__name__}")
    if images.dim() < 2 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor (..., H, W), got shape {tuple(images.shape)} "
                         f"and dtype {images.dtype}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    if isinstance(truncate, bool) or not isinstance(truncate, numbers.Real) or not truncate > 0:
        raise ValueError(f"truncate must be a positive number of standard deviations, got {truncate!r}")
    sigmas = _sigmas(sigma, images)
    height, width = images.shape[-2:]
    if sigmas.numel() == 1:
        value = float(sigmas[0])
        if value == 0:
            return images
        radius = math.ceil(truncate * value)
        kernels = gaussian_kernel(value, radius, device=images.device).view(1, -1)
        flat = images.reshape(-1, 1, height, width)
        groups = 1
    else:
        radii = [math.ceil(truncate * s) for s in sigmas.tolist()]
        radius = max(radii)
        kernels = torch.stack(
            [F.pad(gaussian_kernel(s, r, device=images.device), (radius - r, radius - r))
             for s, r in zip(sigmas.tolist(), radii)]
        )
        if radius == 0:
            return images
        per_entry = images[0].numel() // (height * width) if images.shape[0] else 1
        kernels = kernels.repeat_interleave(per_entry, dim=0)
        flat = images.reshape(1, -1, height, width)
        groups = flat.shape[1]
    kernels = kernels.to(images.dtype)
    if padding == "zeros":
        conv_padding = radius
    else:
        flat = F.pad(flat, (radius, radius, radius, radius), mode=padding)
        conv_padding = 0
    out = F.conv2d(flat, kernels.view(groups, 1, -1, 1), padding=(conv_padding, 0), groups=groups)
    out = F.conv2d(out, kernels.view(groups, 1, 1, -1), padding=(0, conv_padding), groups=groups)
    return out.reshape(images.shape)


def _sigmas(sigma: float | Tensor, images: Tensor) -> Tensor:
    """``sigma`` as a float64 CPU tensor of one value, or of one value per entry of ``images``' first dimension."""
    if isinstance(sigma, Tensor):
        values = sigma.detach().to("cpu", torch.float64)
        if values.dim() == 0:
            values = values.view(1)
        elif values.dim() != 1 or images.dim() < 3 or values.shape[0] != images.shape[0]:
            raise ValueError(
                f"a tensor sigma must be 0-d or (N,) with N = images.shape[0] = {images.shape[0]} for images "
                f"with a leading dimension, got shape {tuple(sigma.shape)} for images {tuple(images.shape)}"
            )
    elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        values = torch.tensor([float(sigma)], dtype=torch.float64)
    else:
        raise TypeError(f"sigma must be a number or a tensor of standard deviations, got {type(sigma).__name__}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"sigma must be finite and non-negative (pixels), got {sigma!r}")
    return values
