"""Loading a user's model and images for the ``attrib`` command (and for :func:`attrib.explain_dataset` callers).

A model ``spec`` is one of

* a shipped model: ``"shapes-cnn"`` or ``"shapes-resnet"`` (see :mod:`attrib.data`);
* a torchvision model name (``"resnet18"``), with ``weights`` a path to a
  state_dict or, where the network has them, a torchvision weights name
  (``"DEFAULT"``, ``"IMAGENET1K_V1"``; these download on first use);
* a file: TorchScript (``torch.jit.save``) or a whole pickled module
  (``torch.save(model)``), optionally with ``weights`` a state_dict to load;
* ``"package.module:function"``: a function returning the model (called without arguments).

Example:
    >>> model = load_model("resnet18", weights="DEFAULT")
    >>> image = normalize(load_image("cat.jpg", size=224), "imagenet")   # (1, 3, 224, 224)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class LoadError(ValueError):
    """A model or image could not be loaded; the message says why in one line."""


def _shipped_names() -> tuple[str, ...]:
    from ..data.models import MODEL_NAMES

    return MODEL_NAMES


def _torchvision_names() -> list[str]:
    try:
        from torchvision import models  # type: ignore[import-untyped]
    except ImportError:
        return []
    return list(models.list_models(module=models))


def _state_dict(path: str, device: torch.device) -> dict[str, Tensor]:
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise LoadError(f"weights file {path!r} does not exist") from None
    except Exception as error:  # noqa: BLE001 - any unpickling problem becomes one line
        raise LoadError(f"cannot read weights file {path!r}: {error}") from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise LoadError(f"weights file {path!r} holds a {type(loaded).__name__}, expected a state_dict")
    return loaded


def _apply_weights(model: nn.Module, weights: str, device: torch.device) -> None:
    try:
        model.load_state_dict(_state_dict(weights, device))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise LoadError(f"weights {weights!r} do not fit the model: {first}") from None


def _torchvision_model(name: str, weights: str | None, device: torch.device) -> nn.Module:
    from torchvision import models

    model: nn.Module
    if weights is None or os.path.exists(weights):
        model = models.get_model(name, weights=None)
        if weights is not None:
            _apply_weights(model, weights, device)
        return model
    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        raise LoadError(f"{name} has no torchvision weights; pass a state_dict file as --weights") from None
    try:
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        options = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise LoadError(f"{weights!r} is neither a file nor a weights name of {name}; choose from {options}") from None
    model = models.get_model(name, weights=chosen)
    return model


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise LoadError(f"cannot import {module_name!r} for model {spec!r}: {error}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise LoadError(f"module {module_name!r} has no callable {attr!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise LoadError(f"{spec} returned a {type(model).__name__}, expected an nn.Module")
    return model


def _model_file(path: str, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call, no-any-return]
    except (RuntimeError, ValueError):
        pass
    try:
        loaded = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # noqa: BLE001
        raise LoadError(f"cannot read model file {path!r}: {error}") from None
    if isinstance(loaded, dict):
        raise LoadError(
            f"{path!r} holds a state_dict, not a model; give the architecture as --model and the file as --weights"
        )
    if not isinstance(loaded, nn.Module):
        raise LoadError(f"{path!r} holds a {type(loaded).__name__}, expected an nn.Module")
    return loaded


def load_model(spec: str, *, weights: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model named by ``spec`` (see the module docstring), in eval mode on ``device``.

    Raises:
        LoadError: (a ``ValueError``) the spec names no model, a file cannot be
            read, or the weights do not fit; the message is one line.
    """
    if not isinstance(spec, str) or not spec:
        raise LoadError(f"model must be a non-empty string, got {spec!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LoadError(f"unknown device {device!r}") from None
    if spec in _shipped_names():
        from ..data import load_model as load_shipped

        model = load_shipped(spec)
        if weights is not None:
            _apply_weights(model, weights, dev)
    elif os.path.isfile(spec):
        model = _model_file(spec, dev)
        if weights is not None:
            _apply_weights(model, weights, dev)
    elif ":" in spec and not os.path.exists(spec):
        model = _factory(spec)
        if weights is not None:
            _apply_weights(model, weights, dev)
    elif spec in _torchvision_names():
        model = _torchvision_model(spec, weights, dev)
    else:
        if any(sep in spec for sep in ("/", os.sep, ".pt", ".pth")):
            raise LoadError(f"model file {spec!r} does not exist")
        known = ", ".join(_shipped_names())
        raise LoadError(
            f"unknown model {spec!r}: expected {known}, a torchvision model name, a model file, or module:function"
        )
    return model.to(dev).eval()


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> Tensor:
    """An image file as a float tensor ``(1, 3, H, W)`` in ``[0, 1]``.

    ``size`` resizes it: an int is the shorter side (then a centre crop to a
    square, as torchvision's evaluation transforms), a pair is ``(H, W)``.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with the vision/viz extras
        raise LoadError("reading images needs Pillow: pip install 'attrib[vision]'") from None
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError:
        raise LoadError(f"image {str(path)!r} does not exist") from None
    except Exception as error:  # noqa: BLE001
        raise LoadError(f"cannot read image {str(path)!r}: {error}") from None
    if isinstance(size, int):
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    elif size is not None:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def _stats(kind: str, images: Tensor) -> tuple[Tensor, Tensor]:
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {kind!r}")
    mean, std = NORMALIZATIONS[kind]
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape),
        torch.tensor(std, dtype=images.dtype, device=images.device).view(shape),
    )


def normalize(images: Tensor, kind: str = "imagenet") -> Tensor:
    """``(images - mean) / std`` per channel for images ``(N, 3, H, W)`` in ``[0, 1]``."""
    mean, std = _stats(kind, images)
    return (images - mean) / std


def denormalize(images: Tensor, kind: str = "imagenet") -> Tensor:
    """The inverse of :func:`normalize`: back to ``[0, 1]`` for display."""
    mean, std = _stats(kind, images)
    return images * std + mean


def model_input_size(model: nn.Module) -> int | None:
    """The image side a shipped model expects (its ``input_size`` attribute), or None if unknown."""
    size: Any = getattr(model, "input_size", None)
    return int(size) if isinstance(size, int) else None
