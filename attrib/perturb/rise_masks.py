"""The random masks of RISE, regenerated chunk by chunk from a few numbers per mask."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ..core.randomness import make_generator


class RiseMasks(nn.Module):
    r"""``num_masks`` smooth random masks ``(1, H, W)`` in [0, 1], as in RISE (Petsiuk et al., 2018).

    Mask ``s`` is a ``num_cells x num_cells`` grid of independent keep bits
    :math:`g_{ab} \sim \mathrm{Bernoulli}(p)` (1 keeps), upsampled bilinearly
    to cells of :math:`c = \lceil H / \text{num\_cells} \rceil` pixels
    (:math:`\lceil W / \text{num\_cells} \rceil` across) and shifted by a
    random :math:`(\delta_y, \delta_x) \in [0, c)^2` pixels:

    .. math::
        M_s(y, x) = \sum_{a, b} \Lambda\big(t_y - a\big)\, g_{ab}\, \Lambda\big(t_x - b\big),
        \qquad t_y = \operatorname{clamp}\Big(\frac{y + \delta_y + \lfloor c/2 \rfloor + \tfrac12}{c}
        - \tfrac32,\ 0,\ \text{num\_cells} - 1\Big)

    with the hat :math:`\Lambda(t) = \max(0, 1 - |t|)` (the bilinear kernel of
    ``F.interpolate(..., align_corners=False)`` on the grid padded by one
    replicated cell), and likewise across. The weights at each pixel sum to 1,
    so :math:`\mathbb{E}[M_s(y, x)] = p` everywhere.

    Only the keep bits and the shifts are stored (``num_cells**2 + 2`` numbers
    a mask, as buffers, so ``.to(device)`` moves them); full-resolution masks
    are computed on demand by :meth:`chunk` or :meth:`rows` as two batched
    matrix products, so the whole set is never held in memory and a mask is the
    same whichever chunk produced it. Mask ``s`` depends only on the seed and
    ``s``: the first ``m`` masks of a larger set with the same seed are the
    ``m`` masks of the smaller one.

    Args:
        num_masks: how many masks.
        size: the mask size ``(H, W)`` (or one int for square masks).
        num_cells: the grid's cells along each side (7 in RISE).
        p: the probability that a cell is kept (0.5 in RISE).
        seed, generator: the source of randomness (see
            :func:`attrib.core.randomness.make_generator`); never torch's global RNG.
        device: where the masks live (the generator's device by default, else the CPU).

    Example:
        >>> masks = RiseMasks(8000, (224, 224), seed=0, device=images.device)
        >>> block = masks.chunk(0, 64)                    # (64, 1, 224, 224)
        >>> assert torch.equal(block[10:20], masks.chunk(10, 20))
    """

    bits: Tensor
    shifts: Tensor
    num_masks: int
    num_cells: int
    size: tuple[int, int]
    cell: tuple[int, int]
    p: float

    def __init__(
        self,
        num_masks: int,
        size: int | tuple[int, int],
        *,
        num_cells: int = 7,
        p: float = 0.5,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_masks = _positive_int(num_masks, "num_masks")
        self.num_cells = _positive_int(num_cells, "num_cells")
        self.size = _size(size)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"p (the keep probability of a cell) must be a number in (0, 1], got {p!r}")
        self.p = float(p)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        device = torch.device(device)
        self.cell = (math.ceil(self.size[0] / self.num_cells), math.ceil(self.size[1] / self.num_cells))
        gen = make_generator(seed, generator, device)
        # One row of uniforms per mask: its keep bits, then its two shifts. Drawing
        # row by row makes mask s independent of num_masks.
        uniforms = torch.rand(self.num_masks, self.num_cells**2 + 2, generator=gen, device=device, dtype=torch.float64)
        bits = (uniforms[:, :-2] < self.p).view(self.num_masks, self.num_cells, self.num_cells)
        cells = torch.tensor(self.cell, device=device, dtype=torch.float64)
        shifts = (uniforms[:, -2:] * cells).floor().long().clamp_max(cells.long() - 1)
        self.register_buffer("bits", bits)
        self.register_buffer("shifts", shifts)

    def __len__(self) -> int:
        return self.num_masks

    def extra_repr(self) -> str:
        return f"num_masks={self.num_masks}, size={self.size}, num_cells={self.num_cells}, p={self.p}"

    def chunk(self, start: int, stop: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """Masks ``start..stop-1`` as a ``(stop - start, 1, H, W)`` tensor of ``dtype`` on the masks' device."""
        if not 0 <= start <= stop <= self.num_masks:
            raise ValueError(f"chunk(start, stop) needs 0 <= start <= stop <= {self.num_masks}, got ({start}, {stop})")
        return self._masks(self.bits[start:stop], self.shifts[start:stop], dtype)

    def rows(self, index: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """The masks numbered ``index`` (an integer tensor ``(R,)``) as ``(R, 1, H, W)``; repeats allowed."""
        index = index.to(self.bits.device)
        return self._masks(self.bits.index_select(0, index), self.shifts.index_select(0, index), dtype)

    def forward(self, index: Tensor) -> Tensor:
        """Same as :meth:`rows` in float32."""
        return self.rows(index)

    def _masks(self, bits: Tensor, shifts: Tensor, dtype: torch.dtype) -> Tensor:
        grid = bits.to(dtype)
        down = _weights(self.size[0], self.cell[0], self.num_cells, shifts[:, 0], dtype)
        across = _weights(self.size[1], self.cell[1], self.num_cells, shifts[:, 1], dtype)
        return torch.bmm(torch.bmm(down, grid), across.transpose(1, 2)).unsqueeze(1)


def _weights(length: int, cell: int, cells: int, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """Bilinear weights ``(R, length, cells)``: pixel ``i`` of row ``r`` against grid cell ``a``."""
    pixel = torch.arange(length, device=shift.device, dtype=dtype)
    offset = (shift.to(dtype) + cell // 2 + 0.5).unsqueeze(1)
    t = ((pixel + offset) / cell - 1.5).clamp(0, cells - 1)
    a = torch.arange(cells, device=shift.device, dtype=dtype)
    return (1 - (t.unsqueeze(2) - a).abs()).clamp_min(0)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _size(size: object) -> tuple[int, int]:
    pair = (size, size) if not isinstance(size, (tuple, list, torch.Size)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])
