"""Finding a layer of a model by dotted name or by module."""

from __future__ import annotations

import difflib

from torch import nn


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
