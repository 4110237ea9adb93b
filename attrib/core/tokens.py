"""Reading a layer's output as a channels-first map ``(N, C, *grid)``, whatever its layout.

CNN layers give ``(N, C, h, w)`` maps; vision transformers do not. ViT blocks
give tokens ``(N, p + h*w, C)`` with ``p`` leading tokens (the class token) in
front of the patch grid; Swin stages give channels-last maps ``(N, h, w, C)``.
:func:`infer_layout` works out which from the layer's output shape, the
input's spatial size and the norms inside the layer, and the resulting
:class:`Layout` turns the activation (and any gradient of the same shape)
into ``(N, C, *grid)``. A ``reshape`` callable overrides the inference for
layouts it cannot read.

Rules, for an input with spatial size ``(H, W)``:

* 3-D output ``(N, T, C)`` of an image model: tokens. The first ``p`` tokens
  (``p = 1``, then ``p = 0``) are dropped when ``T - p`` factors as ``h * w``
  with ``h / w`` the input's aspect ratio (a perfect square for a square input).
* 4-D output ``(N, a, b, c)``: channels-first if ``(b, c)`` has the input's
  aspect ratio and ``(a, b)`` does not, channels-last in the opposite case; when
  both (or neither) fit, channels-last if ``c`` is the size a LayerNorm inside
  the layer normalises, channels-first otherwise.
* Any other output with at least one spatial dimension: channels-first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Reshape = Callable[[Tensor], Tensor]
"""A layer output ``(N, ...)`` -> channels-first map ``(N, C, *grid)`` (the ``reshape=`` escape hatch)."""

#: How far two per-axis strides (input size / map size) may differ and still count as one aspect ratio.
_ASPECT_TOLERANCE = 1.3


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto ``(N, C, *grid)``.

    Attributes:
        kind: ``"channels_first"``, ``"channels_last"``, ``"tokens"`` or ``"custom"``.
        prefix: leading tokens dropped (``"tokens"`` only).
        grid: the spatial size of the map (``"tokens"`` only; others read it off the tensor).
        reshape: the user's callable (``"custom"`` only).
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, ...] = ()
    reshape: Reshape | None = None

    def to_grid(self, t: Tensor) -> Tensor:
        """The channels-first map ``(R, C, *grid)`` of a layer output (or its gradient) ``(R, ...)``."""
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            return t.movedim(-1, 1)
        if self.kind == "tokens":
            return t[:, self.prefix :].transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid)
        assert self.reshape is not None
        out = self.reshape(t)
        if not isinstance(out, Tensor) or out.dim() < 3 or out.shape[0] != t.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"reshape must map a layer output of shape {tuple(t.shape)} to a map (N, C, *grid) with the same N, "
                f"got {shape}"
            )
        return out

    def to_grid_per_target(self, t: Tensor) -> Tensor:
        """``(R, K, ...)`` (one gradient per target) -> ``(R, K, C, *grid)``."""
        grid = self.to_grid(t.flatten(0, 1))
        return grid.reshape(t.shape[0], t.shape[1], *grid.shape[1:])

    def __str__(self) -> str:
        if self.kind == "tokens":
            dropped = f"{self.prefix} leading token{'s' if self.prefix != 1 else ''} dropped, " if self.prefix else ""
            return f"tokens ({dropped}grid {'x'.join(map(str, self.grid))})"
        return self.kind.replace("_", "-")


def infer_layout(
    layer_name: str,
    output_shape: tuple[int, ...],
    input_shape: tuple[int, ...] | None,
    layer: nn.Module | None = None,
    reshape: Reshape | None = None,
) -> Layout:
    """The :class:`Layout` of a layer output of ``output_shape`` (see the module docstring).

    Args:
        layer_name: for error messages.
        output_shape: the layer output's shape ``(N, ...)``.
        input_shape: the model input's shape ``(N, C, *spatial)``, or None if unknown.
        layer: the layer module (its LayerNorms hint at channels-last outputs).
        reshape: the user's override; when given it is used as is.

    Raises:
        ValueError: the output has no spatial dimensions or a token count that
            does not factor into a grid; the message names ``reshape=``.
    """
    if reshape is not None:
        return Layout("custom", reshape=reshape)
    spatial = tuple(input_shape[2:]) if input_shape is not None and len(input_shape) >= 3 else None
    dims = len(output_shape)
    if dims <= 2:
        raise ValueError(
            f"layer {layer_name!r} outputs shape {output_shape}, which has no spatial dimensions; choose a layer "
            "with a spatial map (e.g. the last convolutional block), or pass reshape= a callable that turns its "
            "output into (N, C, h, w)"
        )
    if dims == 3 and spatial is not None and len(spatial) == 2:
        return _token_layout(layer_name, output_shape, spatial)
    if dims == 4 and spatial is not None and len(spatial) == 2:
        first = _fits(output_shape[2:], spatial)
        last = _fits(output_shape[1:3], spatial)
        if first != last:
            return Layout("channels_first" if first else "channels_last")
        if output_shape[3] in _layer_norm_sizes(layer):
            return Layout("channels_last")
    return Layout("channels_first")


def _fits(grid: tuple[int, ...], spatial: tuple[int, ...]) -> bool:
    """Whether a map of size ``grid`` can come from an input of size ``spatial`` (no larger, same aspect)."""
    if any(g < 1 or g > s for g, s in zip(grid, spatial)):
        return False
    strides = [s / g for g, s in zip(grid, spatial)]
    return max(strides) <= _ASPECT_TOLERANCE * min(strides)


def _token_layout(layer_name: str, shape: tuple[int, ...], spatial: tuple[int, ...]) -> Layout:
    tokens = shape[1]
    height, width = spatial
    for prefix in (1, 0):
        count = tokens - prefix
        if count < 1:
            continue
        best: tuple[float, int] | None = None
        for h in range(1, math.isqrt(count) + 1):
            for rows in {h, count // h}:
                if count % rows:
                    continue
                mismatch = abs(math.log((height / rows) / (width / (count // rows))))
                if best is None or mismatch < best[0]:
                    best = (mismatch, rows)
        if best is not None and best[0] <= math.log(_ASPECT_TOLERANCE):
            rows = best[1]
            return Layout("tokens", prefix=prefix, grid=(rows, count // rows))
    raise ValueError(
        f"layer {layer_name!r} outputs {tokens} tokens of width {shape[2]} (shape {shape}), which do not form a "
        f"patch grid with the aspect ratio of the {height}x{width} input (with or without one class token); "
        "pass reshape= a callable that turns the layer output into (N, C, h, w)"
    )


def _layer_norm_sizes(layer: nn.Module | None) -> set[int]:
    """The last normalised dimension of every LayerNorm inside ``layer``."""
    if layer is None:
        return set()
    return {m.normalized_shape[-1] for m in layer.modules() if isinstance(m, nn.LayerNorm) and m.normalized_shape}


def ablation_positions(layout: Layout, example_shape: tuple[int, ...]) -> Tensor:
    """For each channel ``k`` of the map, the flat positions in one example's layer output that form it.

    Returns a long tensor ``(C, *grid)``: entry ``[k, ...]`` is the index into
    the flattened output of one example ``(numel,)``. Found by pushing the
    indices ``0 .. numel-1`` through :meth:`Layout.to_grid`, so it holds for a
    custom ``reshape`` too, as long as that only rearranges elements.

    Raises:
        ValueError: ``reshape`` does more than rearrange (the result is not a set of valid indices).
    """
    numel = math.prod(example_shape)
    index = torch.arange(numel, dtype=torch.float64).view(1, *example_shape)
    grid = layout.to_grid(index)[0]
    positions = grid.round().long()
    valid = (
        numel < 2**53
        and bool((positions.to(torch.float64) == grid).all())
        and bool(((positions >= 0) & (positions < numel)).all())
        and bool(torch.bincount(positions.flatten(), minlength=numel).le(1).all())
    )
    if not valid:
        raise ValueError(
            "this method needs reshape= to only rearrange the layer's output (view, permute, slice), so that each "
            "map channel corresponds to elements of the layer output; the given reshape does more"
        )
    return positions
