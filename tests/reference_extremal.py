"""A slow float64 reference for extremal perturbation, written from the formulas, one mask at a time.

Nothing here uses attrib: the mask is pooled pixel by pixel from its
neighbouring parameters (TorchRay's neighbourhood and bump), the fade
perturbation is ``x * m``, the optimiser is SGD with momentum written out, and
the area term is the sorted image values against the step plus the margins
against 0, over the margins that reach ``margin`` pixels beyond the first and
the last parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

COLDNESS = 20.0


def pads(size: int, step: int, sigma: float) -> tuple[int, int]:
    """Margin pixels before and after the image along one side: ``margin`` beyond the first and last parameter."""
    crop = round(sigma)
    last = sigma - crop + step * (math.ceil(size / step) - 1)  # the last parameter's image pixel
    return crop, min(crop, max(0, round(last + sigma) - (size - 1)))


def region_mask(params: Tensor, shape: tuple[int, int], step: int, sigma: float) -> Tensor:
    """The softmax-pooled, clamped mask ``(H + pads, W + pads)`` of one parameter grid ``(h, w)``, in float64.

    Pixel ``u`` (image coordinates, negative in the margins) sees the cells
    ``floor((u + crop) / step) + k - p`` for ``k = 0..2r`` along each axis,
    with ``r = 1 + ceil(sigma / step)``, ``p = 1 + ceil(2 sigma / step)``;
    cell ``j`` sits at pixel ``sigma - crop + step * j`` and weighs
    ``exp(-2 max(d / sigma - 1/2, 0)^2)``; cells off the grid are 0.
    """
    crop = round(sigma)
    radius, padding = 1 + math.ceil(sigma / step), 1 + math.ceil(2 * sigma / step)
    axes = []
    for size, n in zip(shape, params.shape):
        before, after = pads(size, step, sigma)
        u = torch.arange(-before, size + after, dtype=torch.float64)
        own = torch.div(u + crop, step, rounding_mode="floor").long().unsqueeze(1)
        cells = own + torch.arange(2 * radius + 1) - padding
        offset = u.unsqueeze(1) - (sigma - crop + step * cells)  # (pixels, 2r+1)
        axes.append((cells, offset, n))
    (cy, oy, h), (cx, ox, w) = axes
    dist = torch.sqrt(oy[:, None, :, None] ** 2 + ox[None, :, None, :] ** 2)  # (V, U, ky, kx)
    bump = torch.exp(-2 * (dist / sigma - 0.5).clamp(min=0) ** 2)
    valid = ((cy >= 0) & (cy < h))[:, None, :, None] & ((cx >= 0) & (cx < w))[None, :, None, :]
    values = params[cy.clamp(0, h - 1)[:, None, :, None], cx.clamp(0, w - 1)[None, :, None, :]]
    a = (bump * torch.where(valid, values, torch.zeros((), dtype=params.dtype))).flatten(2)
    pooled = (a * torch.softmax(COLDNESS * a, dim=2)).sum(2)
    return pooled.clamp(0, 1)


def tie_averaged(ordered: Tensor, reference: Tensor) -> Tensor:
    """``reference`` with each run of equal values of ``ordered`` replaced by its mean over the run."""
    out = reference.clone()
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] - ordered[i - 1] > 1e-6:  # runs of values within 1e-6 of the next
            out[start:i] = reference[start:i].mean()
            start = i
    return out


def extremal_fade(
    score: Callable[[Tensor], Tensor], x: Tensor, area: float, *, max_iter: int, step: int, sigma: float,
    regul_weight: float = 300.0, regul_growth: float = 1.0035, learning_rate: float = 0.01, momentum: float = 0.9,
) -> tuple[Tensor, Tensor]:
    """Preserve-game extremal perturbation of one image ``x`` ``(C, H, W)`` with the fade, no jitter.

    ``score(image (1, C, H, W)) -> scalar``. Returns the mask of the last step
    ``(H, W)`` and the history ``(2, max_iter)`` (reward, area term).
    """
    x = x.double()
    height, width = x.shape[1:]
    grid = (math.ceil(height / step), math.ceil(width / step))
    (top, _), (left, _) = pads(height, step, sigma), pads(width, step, sigma)
    params = torch.ones(grid, dtype=torch.float64)
    velocity = torch.zeros_like(params)
    zeros = int(height * width * (1 - area))
    reference = (torch.arange(height * width) >= zeros).double()
    history = torch.zeros(2, max_iter, dtype=torch.float64)
    weight = regul_weight
    mask = torch.zeros(height, width, dtype=torch.float64)
    for t in range(max_iter):
        p = params.clone().requires_grad_(True)
        region = region_mask(p, (height, width), step, sigma)
        mask = region[top : top + height, left : left + width]
        reward = score((x * mask).unsqueeze(0)).reshape(())
        margin = region.clone()
        margin[top : top + height, left : left + width] = 0
        ordered = mask.flatten().sort().values
        penalty = ((ordered - reference).square().sum() + margin.square().sum()) / region.numel()
        tied = tie_averaged(ordered.detach(), reference)  # equal values get the gradient of their mean target
        shift = 2 * weight * (tied - reference).dot(ordered) / region.numel()
        energy = reward - weight * penalty + shift  # same value as without ties, gradient tie-averaged
        (grad,) = torch.autograd.grad(-energy, p)
        velocity = grad if t == 0 else momentum * velocity + (1 - momentum) * grad
        params = (params - learning_rate * velocity).clamp(0, 1)
        history[0, t], history[1, t] = reward.detach(), -weight * penalty.detach()
        mask = mask.detach()
        weight *= regul_growth
    return mask, history
