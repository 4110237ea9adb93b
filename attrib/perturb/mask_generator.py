"""Smooth masks from a coarse grid of parameters (the extremal perturbation parametrisation)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("softmax", "sum", "sigmoid")

#: Inverse temperature of the soft maximum (and slope of the sigmoid) over neighbouring cells, as TorchRay's.
COLDNESS = 20.0


class MaskGenerator(nn.Module):
    r"""Smooth masks :math:`m` from parameters :math:`\bar m` on a grid ``step`` pixels apart.

    Parameter :math:`\bar m_j` of cell :math:`j` sits at pixel
    :math:`c_j = \mathrm{margin} + \mathrm{step}\cdot j` of a mask that
    extends ``margin = sigma`` pixels beyond the image on each side. Pixel
    :math:`u` sees the :math:`(2r+1)^2` cells :math:`j` around its own,
    :math:`\lfloor u/\mathrm{step} \rfloor + k - p` (:math:`k = 0..2r`, with
    :math:`r = 1 + \lceil \sigma/\mathrm{step} \rceil` and padding
    :math:`p = 1 + \lceil 2\sigma/\mathrm{step} \rceil`; cells off the grid
    count as 0), each weighted by the bump

    .. math::
        w_j(u) = \exp\!\big(-2\,\max(\|u - c_j\|/\sigma - \tfrac12,\ 0)^2\big)

    (flat within :math:`\sigma/2`), and pools the products
    :math:`a_j = w_j(u)\,\bar m_j` with ``pooling``:

    * ``"softmax"``: :math:`\sum_j a_j\, \mathrm{softmax}_j(20\, a)` (a smooth maximum, the paper's choice);
    * ``"sum"``: :math:`\sum_j a_j`;
    * ``"sigmoid"``: :math:`\mathrm{sigmoid}(20 \sum_j a_j - 3)`.

    With ``clamp`` the result is clipped to :math:`[0, 1]`. Same maths as
    TorchRay's ``MaskGenerator``. The weights repeat from cell to cell, so
    only one cell's ``(2r+1)^2 x step x step`` are stored (a buffer built in
    one vectorised expression on the module's device, moved by
    ``.to(device)``); :attr:`weight` expands them to TorchRay's
    ``(1, (2r+1)^2, *shape_out)``. :meth:`generate_mask` skips the margins.
    The soft maximum never stores the :math:`(2r+1)^2` products of every
    pixel: it runs over blocks of cells of a fixed size (:data:`POOL_BLOCK`
    elements) and keeps three numbers per pixel for the backward pass; its
    largest tensor is the :math:`(2r+1)^2` parameters each cell sees,
    ``step**2`` times smaller than the products.

    Args:
        shape: the image size ``(H, W)``.
        step: the grid spacing in pixels (a positive int).
        sigma: the bump radius in pixels (positive).
        clamp: clip masks to ``[0, 1]``.
        pooling: ``"softmax"``, ``"sum"`` or ``"sigmoid"``.

    Attributes:
        shape_in: the parameter grid ``(ceil(H/step), ceil(W/step))``.
        shape_out: the full mask size, margins included.
        margin: the pixels of margin on each side of the image in the full mask.

    Example:
        >>> generator = MaskGenerator((224, 224), step=7, sigma=21)
        >>> params = torch.rand(5, 1, *generator.shape_in)
        >>> mask, full = generator.generate(params)    # (5, 1, 224, 224), (5, 1, *generator.shape_out)
    """

    cell_weight: Tensor
    shape: tuple[int, int]
    step: int
    sigma: float
    clamp: bool
    pooling: str
    margin: float
    padding: int
    radius: int
    shape_in: tuple[int, ...]
    shape_mid: tuple[int, ...]
    shape_out: tuple[int, ...]
    _grid: tuple[int, ...]

    def __init__(
        self,
        shape: tuple[int, int],
        step: int,
        sigma: float,
        *,
        clamp: bool = True,
        pooling: str = "softmax",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if (
            not isinstance(shape, (tuple, list, torch.Size))
            or len(shape) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise ValueError(f"shape must be a pair of positive ints (H, W), got {shape!r}")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
            raise ValueError(f"step must be a positive int (pixels between parameters), got {step!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 < sigma < math.inf:
            raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.step = int(step)
        self.sigma = float(sigma)
        self.clamp = bool(clamp)
        self.pooling = pooling
        self.margin = self.sigma
        self.padding = 1 + math.ceil((self.margin + self.sigma) / self.step)
        self.radius = 1 + math.ceil(self.sigma / self.step)
        self.shape_in = tuple(math.ceil(z / self.step) for z in self.shape)
        # Cells whose neighbourhoods are computed: TorchRay's count, or more where that would end the full mask
        # before the image does (small sigma / large step), so that the crop always fits.
        crop = round(self.margin)
        self.shape_mid = tuple(
            max(z_in + 2 * self.padding - 2 * self.radius, -(-(crop + z + self.step - 1) // self.step))
            for z_in, z in zip(self.shape_in, self.shape)
        )
        self.shape_out = tuple(self.step * z - self.step + 1 for z in self.shape_mid)
        # Cells pooled by `_pooled`: enough for the image with `crop` pixels of margin on every side.
        self._grid = tuple(max(m, -(-(2 * crop + z) // self.step)) for m, z in zip(self.shape_mid, self.shape))
        self.register_buffer("cell_weight", self._weights(torch.device(device) if device is not None else None))

    @property
    def weight(self) -> Tensor:
        """The bump weights ``(1, (2r+1)^2, *shape_out)``: channel ``ky * (2r+1) + kx`` for cell offset ``(ky, kx)``."""
        mid_h, mid_w = self.shape_mid
        size, step = self.cell_weight.shape[0], self.step
        grid = self.cell_weight.view(1, size, 1, step, 1, step).expand(-1, -1, mid_h, -1, mid_w, -1)
        grid = grid.reshape(1, size, mid_h * step, mid_w * step)
        return grid[:, :, : self.shape_out[0], : self.shape_out[1]]

    def _weights(self, device: torch.device | None) -> Tensor:
        """The bump weights of one cell's pixels, ``((2r+1)^2, step, step)``.

        Pixel ``u`` of cell ``i`` (``u = step * i + o``) is ``o - margin - step * (k - p)`` away from the
        centre of its neighbour ``k``, whatever ``i``: the weights repeat from cell to cell.
        """
        size = 2 * self.radius + 1
        o = torch.arange(self.step, device=device, dtype=torch.float64)
        k = torch.arange(size, device=device, dtype=torch.float64)
        d = o[None, :] - self.margin - self.step * (k[:, None] - self.padding)  # (2r+1, step)
        delta = torch.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2)  # (ky, kx, oy, ox)
        weight = torch.exp(-2 * ((delta / self.sigma - 0.5).clamp(min=0) ** 2))
        return weight.reshape(size * size, self.step, self.step).to(torch.float32)

    def generate(self, params: Tensor) -> tuple[Tensor, Tensor]:
        r"""Masks from parameters ``(K, 1, *shape_in)``.

        Returns:
            ``(mask, full)``: the masks on the image ``(K, 1, H, W)`` and the
            full masks with margins ``(K, 1, *shape_out)`` (``mask`` is a view
            of ``full``). Differentiable in ``params``.
        """
        full = self._pooled(params, (0, self.shape_mid[0]), (0, self.shape_mid[1]))
        full = full[:, :, : self.shape_out[0], : self.shape_out[1]]
        top = left = round(self.margin)
        return full[:, :, top : top + self.shape[0], left : left + self.shape[1]], full

    def generate_mask(self, params: Tensor) -> Tensor:
        """Only the masks on the image ``(K, 1, H, W)``, as ``generate(params)[0]``, skipping the margins' work."""
        return self.generate_region(params, 0)

    def generate_region(self, params: Tensor, pad: int | tuple[int, int, int, int]) -> Tensor:
        """The masks on the image grown by ``pad`` pixels, ``(K, 1, H + top + bottom, W + left + right)``.

        ``pad`` is one int for every side or ``(top, bottom, left, right)``,
        each at most ``round(margin)``. ``pad = 0`` gives :meth:`generate_mask`;
        the values are those of the full mask of :meth:`generate` where both
        are computed (its bottom and right margins can be narrower).
        """
        crop = round(self.margin)
        pads = (pad,) * 4 if isinstance(pad, numbers.Integral) and not isinstance(pad, bool) else pad
        if (
            not isinstance(pads, tuple) or len(pads) != 4
            or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and 0 <= p <= crop for p in pads)
        ):
            raise ValueError(f"pad must be an int or (top, bottom, left, right) of ints in [0, {crop}] (the margin), "
                             f"got {pad!r}")
        before, after = (int(pads[0]), int(pads[2])), (int(pads[1]), int(pads[3]))
        spans = [
            ((crop - b) // self.step, -(-(crop + z + a) // self.step)) for z, b, a in zip(self.shape, before, after)
        ]
        pooled = self._pooled(params, spans[0], spans[1])
        top, left = (crop - b - lo * self.step for b, (lo, _) in zip(before, spans))
        height, width = (z + b + a for z, b, a in zip(self.shape, before, after))
        return pooled[:, :, top : top + height, left : left + width]

    def _pooled(self, params: Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
        """The (clamped) pooled mask over cells ``rows[0]..rows[1]-1`` x ``cols[0]..cols[1]-1`` of the full mask."""
        if params.dim() != 4 or params.shape[1] != 1 or tuple(params.shape[2:]) != self.shape_in:
            raise ValueError(f"params must have shape (K, 1, {self.shape_in[0]}, {self.shape_in[1]}), "
                             f"got {tuple(params.shape)}")
        size = 2 * self.radius + 1
        k, step = params.shape[0], self.step
        extra = [m + 2 * self.radius - z - 2 * self.padding for m, z in zip(self._grid, self.shape_in)]
        padded = F.pad(params.to(self.cell_weight.dtype), (self.padding, self.padding + extra[1]) + (
            self.padding, self.padding + extra[0]))
        # Every pixel of a cell sees the same (2r+1)^2 parameters and the weights repeat from cell to cell:
        # lay the parameters out as (mask, cell, neighbour) (a strided view of the padded grid, copied once) and
        # the weights as (neighbour, pixel of the cell).
        a, b = rows[1] - rows[0], cols[1] - cols[0]
        windows = padded[:, 0, rows[0] : rows[1] + size - 1, cols[0] : cols[1] + size - 1]
        cells = windows.unfold(1, size, 1).unfold(2, size, 1).reshape(k, a * b, size * size)
        weight = self.cell_weight.to(cells.dtype).view(size * size, step * step)
        if self.pooling == "softmax":
            pooled: Tensor = _SoftmaxPool.apply(cells, weight)
        else:
            pooled = cells @ weight
            if self.pooling == "sigmoid":
                pooled = torch.sigmoid(COLDNESS * pooled - 3)
        pooled = pooled.view(k, a, b, step, step).permute(0, 1, 3, 2, 4).reshape(k, 1, a * step, b * step)
        return pooled.clamp(0, 1) if self.clamp else pooled

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, step={self.step}, sigma={self.sigma}, clamp={self.clamp}, "
                f"pooling={self.pooling!r}, shape_in={self.shape_in}, shape_out={self.shape_out}")


#: Elements of the ``(rows, pixels, neighbours)`` temporaries of one block of the soft maximum: small enough to
#: stay in a CPU core's cache, large enough that a GPU kernel fills the device.
POOL_BLOCK = {"cpu": 2**17, "cuda": 2**24}


class _SoftmaxPool(torch.autograd.Function):
    r"""The soft maximum :math:`m_t = \sum_j a_{tj} e_{tj} / \sum_j e_{tj}` of :math:`a_{tj} = w_{jt} c_j`, fused.

    :math:`e_{tj} = e^{\beta (a_{tj} - s_t)}` with the pixel's largest
    product :math:`s_t = \max_j a_{tj}` (so every exponential is at most 1).
    ``cells`` ``(K, P, J)`` holds the :math:`J` parameters :math:`c_j` each of
    :math:`P` cells sees, ``weight`` ``(J, T)`` the weights :math:`w_{jt}` of
    the :math:`T` pixels of a cell; the result is ``(K, P, T)``.

    The ``(K P, T, J)`` products are never stored: both passes walk the
    :math:`KP` cells in blocks of :data:`POOL_BLOCK` elements (a few hundred
    kB on a CPU, so the half dozen element-wise passes of a block run in
    cache), and the forward pass keeps only :math:`m`, :math:`s` and
    :math:`Z = \sum_j e_{tj}` per pixel. The backward pass recomputes the
    exponentials of a block and sums, from
    :math:`\partial m_t/\partial a_{tj} = e_{tj}(1 + \beta a_{tj} - \beta m_t)/Z_t`,

    .. math::
        \frac{\partial L}{\partial c_j} = \sum_t w_{jt} e_{tj}\, h_t\,(1 - \beta m_t + \beta a_{tj}),
        \qquad h_t = \frac{\partial L/\partial m_t}{Z_t}.
    """

    @staticmethod
    def forward(ctx: Any, cells: Tensor, weight: Tensor) -> Tensor:
        k, p, j = cells.shape
        w = weight.t().contiguous()  # (T, J): the neighbours contiguous, so every reduction runs along memory
        flat = cells.reshape(k * p, j)
        rows = _pool_rows(flat, w)
        pooled, shift, total = (flat.new_empty(k * p, w.shape[0]) for _ in range(3))
        for start in range(0, k * p, rows):
            block = slice(start, start + rows)
            a = flat[block].unsqueeze(1) * w  # (rows, T, J)
            torch.amax(a, 2, out=shift[block])
            e = torch.sub(a, shift[block].unsqueeze(2)).mul_(COLDNESS).exp_()
            torch.sum(e, 2, out=total[block])
            torch.sum(e.mul_(a), 2, out=pooled[block])
        pooled.div_(total)
        ctx.save_for_backward(flat, w, pooled, shift, total)
        return pooled.view(k, p, -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        flat, w, pooled, shift, total = ctx.saved_tensors
        h = grad.reshape(pooled.shape) / total
        base = h * (1 - COLDNESS * pooled)  # h_t (1 - beta m_t)
        h.mul_(COLDNESS)
        out = torch.empty_like(flat)
        rows = _pool_rows(flat, w)
        for start in range(0, flat.shape[0], rows):
            block = slice(start, start + rows)
            a = flat[block].unsqueeze(1) * w
            we = torch.sub(a, shift[block].unsqueeze(2)).mul_(COLDNESS).exp_().mul_(w)  # w_jt e_tj
            factor = a.mul_(h[block].unsqueeze(2)).add_(base[block].unsqueeze(2))  # h_t (1 - beta m_t + beta a_tj)
            torch.sum(we.mul_(factor), 1, out=out[block])
        return out.view(*grad.shape[:2], -1), None


def _pool_rows(flat: Tensor, w: Tensor) -> int:
    """Cells per block of :class:`_SoftmaxPool`: :data:`POOL_BLOCK` elements of ``(rows, T, J)``."""
    budget = POOL_BLOCK["cuda" if flat.is_cuda else "cpu"]
    return max(1, budget // w.numel())
