"""Occlusion: slide a window of baseline values over the input and record the score drop."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, check_batch_size
from ..core.inputs import InputBatch, InputsLike, as_forward_args, as_input_batch
from ..perturb.blur import gaussian_blur
from ..perturbation_attribution import PerturbationAttribution
from ..targets import TargetLike

Window = int | Sequence[int]


class Occlusion(PerturbationAttribution):
    r"""Occlusion sensitivity (Zeiler & Fergus, 2014), as Captum's ``Occlusion``.

    A window of shape ``window`` slides over each example with step
    ``stride``; window :math:`j` covers the box :math:`B_j` and replaces it by
    the baseline :math:`b`. Each element gets the mean score drop over the
    windows covering it:

    .. math::
        A_t(x)_i = \frac{1}{|\{j : i \in B_j\}|} \sum_{j : i \in B_j}
        \Big(S_t(x) - S_t\big(x \odot (1 - \mathbb 1_{B_j}) + b \odot \mathbb 1_{B_j}\big)\Big)

    Along a dimension of length :math:`D` with window :math:`w` and stride
    :math:`s` the windows start at :math:`0, s, 2s, \dots` and there are
    :math:`\lceil (D - w) / s \rceil + 1` of them; the last may be cut off by
    the border. The window counts per element are computed in closed form and
    the sum over windows is one tensor contraction per dimension, since the
    boxes are products of intervals.

    ``window`` is an int (a ``w x w`` patch over all channels of an image; a
    length-``w`` run of a vector), a tuple over the dimensions after the
    channels (spanning all channels), or a tuple over every dimension after
    ``N`` (Captum's ``sliding_window_shapes``). ``stride`` is an int or a tuple
    of the same length. For a tuple of inputs give one entry per input (or
    one int for all); each window occludes one input, as Captum does. A window
    spanning all channels gives one value per position: maps ``(N, 1, H, W)``
    for images ``(N, C, H, W)``; otherwise maps have the input's shape.

    ``baselines``: a number (0 by default), a tensor broadcastable to the
    input, ``"blur"`` (the input blurred by a Gaussian of ``blur_sigma``
    pixels, half the window's larger side by default; images only), or a
    tuple of these per input.

    The ``(1 + windows) x N`` rows (the clean inputs, then the occluded
    copies) are evaluated ``batch_size`` rows at a time; an ``(N, K)`` target
    gives maps ``(N, K, ...)`` from the same forward passes. Peak memory is
    one block of ``batch_size`` rows plus one score per row, whatever the
    number of windows. A stride larger than the window, which would leave
    elements that no window covers (NaN in Captum), is refused.

    Example:
        >>> occlusion = attrib.Occlusion(model)
        >>> maps = occlusion.attribute(images, target=labels, window=16, stride=8, batch_size=128)
        >>> maps.shape                                         # (N, 1, H, W)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        window: Window | Sequence[Window],
        stride: Window | Sequence[Window] = 1,
        baselines: Any = 0,
        blur_sigma: float | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """Occlusion maps of ``target`` for ``inputs``, in the form of ``inputs``."""
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        grids = _grids(batch, window, stride)
        fills = as_baselines(_blurred(baselines, batch, grids, blur_sigma), batch)
        n, device = batch.n, batch.device
        offsets = [1]  # copy 0 is the clean input, scored in the same passes as the windows
        for grid in grids:
            offsets.append(offsets[-1] + grid.windows)

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            rows = []
            for x, fill, grid, offset in zip(batch.tensors, fills, grids, offsets):
                box = grid.boxes(copy - offset)
                rows.append(torch.where(box, fill.index_select(0, example), x.index_select(0, example)))
            return tuple(rows)

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            scores = self._perturbed_scores(n, offsets[-1], perturb, args, resolved, batch_size, device)
        drops = scores[:1] - scores  # (1 + windows, N) or (1 + windows, N, K)
        maps = [grid.average(drops[start:stop]) for grid, start, stop in zip(grids, offsets, offsets[1:])]
        return batch.restore(maps)


@dataclass(frozen=True)
class _Grid:
    """The windows over one input: per dimension an indicator ``(positions, length)`` of the covered elements.

    A window spanning all channels has a channel indicator ``(1, 1)``: one
    position, and length 1 in the map. ``window`` is the window's full shape.
    """

    covers: tuple[Tensor, ...]
    window: tuple[int, ...]

    @property
    def windows(self) -> int:
        return math.prod(c.shape[0] for c in self.covers)

    def boxes(self, local: Tensor) -> Tensor:
        """Boolean masks ``(R, *shape)`` of windows ``local`` (rows outside ``0..windows-1`` mask nothing)."""
        inside = (local >= 0) & (local < self.windows)
        index = local.clamp(0, self.windows - 1)
        box = inside.view(-1, *([1] * len(self.covers)))
        for d in reversed(range(len(self.covers))):
            positions = self.covers[d].shape[0]
            along = self.covers[d].index_select(0, index % positions)
            index = torch.div(index, positions, rounding_mode="floor")
            shape = [along.shape[0]] + [1] * len(self.covers)
            shape[d + 1] = along.shape[1]
            box = box & along.view(shape)
        return box

    def average(self, drops: Tensor) -> Tensor:
        """``(N[, K], *shape)``: the drops ``(windows, N[, K])`` summed over covering windows, over their count."""
        total = drops.reshape(*(c.shape[0] for c in self.covers), *drops.shape[1:])
        count = drops.new_ones(())
        for cover in self.covers:
            weights = cover.to(drops.dtype)
            total = torch.tensordot(total, weights, dims=([0], [0]))
            count = count.unsqueeze(-1) * weights.sum(0)
        return total / count


def _grids(batch: InputBatch, window: object, stride: object) -> list[_Grid]:
    inputs = batch.tensors
    many = len(inputs) > 1
    windows = _per_input(window, len(inputs), "window")
    strides = _per_input(stride, len(inputs), "stride")
    return [
        _grid(tuple(x.shape[1:]), w, s, f"[{i}]" if many else "", x.device)
        for i, (x, w, s) in enumerate(zip(inputs, windows, strides))
    ]


def _per_input(value: object, count: int, name: str) -> list[object]:
    """One ``window``/``stride`` entry per input: an int is shared; a sequence has one entry per input.

    With one input the value itself is its entry, unless it is a one-entry
    sequence of tuples (Captum's form for a tuple of one input).
    """
    if _is_int(value):
        return [value] * count
    if count == 1:
        nested = isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], Sequence)
        return [value[0] if nested else value]  # type: ignore[index]
    if isinstance(value, Sequence) and len(value) == count:
        return list(value)
    raise ValueError(f"with {count} inputs, {name} must be an int or a tuple with one entry per input, got {value!r}")


def _grid(shape: tuple[int, ...], window: object, stride: object, label: str, device: torch.device) -> _Grid:
    if not shape:
        raise ValueError(f"inputs{label} must have dimensions after N to slide a window over, got shape (N,)")
    dims = len(shape)
    sizes = _full(window, shape, f"window{label}")
    steps = _full(stride, shape, f"stride{label}")
    for d, (length, size, step) in enumerate(zip(shape, sizes, steps)):
        if not 1 <= size <= length:
            raise ValueError(
                f"window{label} {tuple(sizes)} does not fit the input's shape {shape} (after N): "
                f"dimension {d} needs a window between 1 and {length}, got {size}"
            )
        if step < 1:
            raise ValueError(f"stride{label} must be positive, got {tuple(steps)}")
        if step > size and size < length:
            raise ValueError(
                f"stride{label} {tuple(steps)} is larger than window{label} {tuple(sizes)} in dimension {d}: "
                "elements between windows would never be occluded"
            )
    reduced = dims >= 2 and sizes[0] == shape[0]
    covers = []
    for d, (length, size, step) in enumerate(zip(shape, sizes, steps)):
        if d == 0 and reduced:
            covers.append(torch.ones(1, 1, dtype=torch.bool, device=device))
            continue
        positions = -(-(length - size) // step) + 1
        start = torch.arange(positions, device=device).unsqueeze(1) * step
        element = torch.arange(length, device=device)
        covers.append((element >= start) & (element < start + size))
    return _Grid(tuple(covers), sizes)


def _full(value: object, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``window``/``stride`` as one int per dimension after N (a channel dimension left out is spanned whole)."""
    dims = len(shape)
    if _is_int(value):
        v = int(value)  # type: ignore[call-overload]
        if name.startswith("window"):
            return (shape[0], *([v] * (dims - 1))) if dims >= 2 else (v,)
        return (v,) * dims
    if isinstance(value, Sequence) and all(_is_int(v) for v in value):
        ints = tuple(int(v) for v in value)
        if len(ints) == dims:
            return ints
        if dims >= 2 and len(ints) == dims - 1:
            return (shape[0] if name.startswith("window") else 1, *ints)
    raise ValueError(
        f"{name} must be an int or a tuple of ints with one entry per dimension after N ({dims}) "
        f"or per dimension after the channels ({dims - 1}) for inputs of shape (N, *{shape}), got {value!r}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _blurred(baselines: Any, batch: InputBatch, grids: list[_Grid], sigma: float | None) -> Any:
    """``baselines`` with each ``"blur"`` entry replaced by the blurred input."""
    inputs = batch.tensors
    if isinstance(baselines, str):
        baselines = (baselines,) * len(inputs) if len(inputs) > 1 else baselines
    if not isinstance(baselines, (tuple, list)):
        return _blur_entry(baselines, inputs[0], grids[0], sigma, "baselines")
    if len(baselines) != len(inputs):
        return baselines  # as_baselines reports the length
    return tuple(
        _blur_entry(b, x, g, sigma, f"baselines[{i}]") for i, (b, x, g) in enumerate(zip(baselines, inputs, grids))
    )


def _blur_entry(value: Any, x: Tensor, grid: _Grid, sigma: float | None, label: str) -> Any:
    if not isinstance(value, str):
        return value
    if value != "blur":
        raise ValueError(f"{label} must be a number, a tensor or 'blur', got {value!r}")
    if x.dim() != 4:
        raise ValueError(f"{label}='blur' needs images (N, C, H, W), got shape {tuple(x.shape)}")
    return gaussian_blur(x, max(grid.window[-2:]) / 2 if sigma is None else sigma)
