"""A run's settings and their fingerprint: what must not change when a run is resumed.

A store records, in ``run.json``, everything that decides its maps:

* ``method``: ``repr(method)`` (the method, its post-processing, its model's class);
* ``model``: a SHA-256 over the model's ``state_dict`` (names, dtypes, shapes and bytes),
  so a run resumed with other weights is refused;
* ``options``: the attribute options, described as JSON; tensors and arrays by shape,
  dtype and a SHA-256 of their bytes, modules by their class and weights, callables
  by their qualified name (so two lambdas look alike), other objects by their repr;
* ``target``: ``"top-1"``, ``"label"``, ``"class 3"`` or the callable's qualified name;
* ``dataset``, ``length`` and ``first_item``: the dataset's class, its number of items, and item 0's
  input described as above (a SHA-256 of its bytes), so a changed transform (size, normalisation) or
  other data is refused; a dataset with a random transform cannot be resumed;
* ``attrib_version``: maps from another version of attrib are not mixed in.

The fingerprint is the SHA-256 of these settings as canonical JSON (sorted keys).
A resumed run must reproduce it exactly. The method's own ``batch_size``
(``method_batch_size``) is left out on purpose: it changes memory use, not maps.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Settings = dict[str, Any]


def _digest_tensor(t: Tensor) -> str:
    data = t.detach().contiguous().cpu().reshape(-1)
    raw = data.view(torch.uint8) if data.numel() else data.to(torch.uint8)
    return hashlib.sha256(raw.numpy().data).hexdigest()


def _qualified_name(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def describe(value: Any) -> Any:
    """``value`` as JSON-ready data that changes whenever the value does (see the module docstring)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": _digest_tensor(value)}
    if isinstance(value, np.ndarray):
        digest = _digest_tensor(torch.as_tensor(value))
        return {"ndarray": list(value.shape), "dtype": str(value.dtype), "sha256": digest}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, nn.Module):
        return {"module": _qualified_name(value), "sha256": model_digest(value)}
    if callable(value):
        return {"callable": _qualified_name(value)}
    # Memory addresses in a default repr would change the fingerprint on every run.
    return {"object": _qualified_name(value), "repr": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))}


def model_digest(model: object) -> str | None:
    """SHA-256 over a module's ``state_dict`` (None for a plain callable)."""
    if not isinstance(model, nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_digest_tensor(t).encode())
    return h.hexdigest()


def describe_target(target: object) -> str:
    """The recorded form of an ``explain_dataset`` target."""
    if target is None:
        return "top-1"
    if isinstance(target, str):
        return target
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return f"class {int(target)}"
    if callable(target):
        return f"callable {_qualified_name(target)}"
    raise AssertionError(f"unchecked target {target!r}")


def run_settings(
    method: Any, options: Mapping[str, Any], target: object, dataset: object, length: int
) -> Settings:
    """The settings recorded for a run (see the module docstring)."""
    from .. import __version__

    model: Callable[..., Any] | None = getattr(method, "model", None)
    return {
        # A layer chosen on the first call (layer=None) is a function of the model and inputs, both recorded.
        "method": re.sub(r"layer=None(?: \(chosen on the first call\)|, chose '[^']*')", "layer=None", repr(method)),
        "model": model_digest(model),
        "options": describe(dict(options)),
        "target": describe_target(target),
        "dataset": _qualified_name(type(dataset)),
        "length": int(length),
        "first_item": describe(first_input(dataset)),
        "attrib_version": __version__,
    }


def first_input(dataset: Any) -> object:
    """The input of item 0: the item itself, or the first element of an ``(input, label, ...)`` tuple."""
    item = dataset[0]
    return item[0] if isinstance(item, (list, tuple)) and item else item


def fingerprint(settings: Settings) -> str:
    """SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def differences(stored: Settings, current: Settings) -> list[str]:
    """One line per setting that differs between a stored run and the current call."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            lines.append(f"{key}: stored {_short(stored.get(key))}, now {_short(current.get(key))}")
    return lines


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
