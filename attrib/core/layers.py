"""Finding a layer of a model: by dotted name, by module, or the last spatial one (``layer=None``)."""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .tokens import Layout, Reshape, infer_layout


def resolve_layer(model: object, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """The ``(name, module)`` of ``layer`` inside ``model``.

    ``layer`` is a dotted name as in ``model.named_modules()`` (``"features.29"``,
    ``"layer4.1.conv2"``) or a sub-module of ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``layer`` is neither a
            string nor a module.
        ValueError: no such layer; the message lists the closest names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"a layer method needs model to be an nn.Module, got {type(model).__name__}")
    names = {module: name for name, module in model.named_modules()}
    if isinstance(layer, nn.Module):
        if layer not in names:
            raise ValueError(f"layer {type(layer).__name__} is not a sub-module of the model")
        return names[layer], layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    by_name = dict(model.named_modules())
    if layer in by_name and layer != "":
        return layer, by_name[layer]
    candidates = [name for name in by_name if name]
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"available layers include: {', '.join(candidates[:10])}"
    raise ValueError(f"the model has no layer named {layer!r}; {hint}")


def find_spatial_layer(
    model: nn.Module,
    run: Callable[[], Any],
    input_shape: tuple[int, ...] | None,
    reshape: Reshape | None = None,
) -> tuple[str, nn.Module]:
    """The last layer, in execution order, whose output is a spatial map that the model's output depends on.

    ``run()`` calls the model once (on a single example is enough) and
    returns its output. Every sub-module is watched during that call (only
    the calling thread's forward passes: threads sharing the model are not
    disturbed); a candidate runs exactly once, returns one tensor whose layout
    :func:`attrib.core.tokens.infer_layout` can read as a grid larger than one
    position, and is not an adaptive pooling layer (VGG's ``avgpool`` only
    resamples the last map). Among the candidates the last whose map positions
    receive a non-zero gradient of the summed output is chosen: this skips
    per-token layers after a ViT's last attention, whose patch tokens the
    class token never reads (the choice becomes that block's ``ln_1``).

    Raises:
        ValueError: no sub-module qualifies; the message asks for ``layer=``.
    """
    calls: dict[nn.Module, int] = {}
    outputs: list[tuple[str, nn.Module, Tensor]] = []
    names = {module: name for name, module in model.named_modules() if name}
    # The hooks sit on modules other threads may be running: watch only this thread's forward pass.
    owner = threading.get_ident()

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, Tensor):
            outputs.append((names[module], module, output))
            return output.clone()  # keeps the recorded tensor safe from later in-place ops
        return None

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    candidates: list[tuple[str, nn.Module, Tensor, Layout]] = []
    for name, module, output in outputs:
        if calls[module] != 1 or isinstance(module, _RESAMPLING_POOLS):
            continue
        try:
            layout = infer_layout(name, tuple(output.shape), input_shape, module, reshape)
            grid = layout.to_grid(output)
        except (ValueError, RuntimeError, TypeError):
            continue
        if grid.dim() >= 3 and math.prod(grid.shape[2:]) > 1:
            candidates.append((name, module, output, layout))
    if not candidates:
        raise ValueError(
            f"found no layer of {type(model).__name__} with a spatial output (N, C, h, w), ViT tokens or a "
            "channels-last map; name the layer to explain with layer="
        )
    total = _summed(result)
    tracked = [c for c in candidates if c[2].requires_grad]
    if total is not None and total.requires_grad and tracked:
        grads = torch.autograd.grad(total, [c[2] for c in tracked], allow_unused=True)
        for (name, module, _, layout), grad in zip(reversed(tracked), reversed(grads)):
            if grad is not None and bool(layout.to_grid(grad).ne(0).any()):
                return name, module
    name, module, _, _ = candidates[-1]
    return name, module


_RESAMPLING_POOLS = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def _summed(output: Any) -> Tensor | None:
    """The sum of a model output (a tensor, or the floating tensors of a tuple/dict), or None."""
    if isinstance(output, Tensor):
        return output.sum() if output.is_floating_point() else None
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    parts = [_summed(v) for v in values]
    found = [p for p in parts if p is not None]
    return torch.stack(found).sum() if found else None
