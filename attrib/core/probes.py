"""Reading inner layers' outputs during the model's own forward pass (for :class:`attrib.Neuron` targets).

A target that scores an inner unit instead of a class needs the output of its
layer from the very forward pass whose output the method scores: the same
rows, the same graph (so gradients, backward rules and DeepLift's paired rows
all see it). Every method resolves its target once at the start of a call
(:func:`attrib.targets.resolve_target`), which names the layers to watch for
the calling thread (:func:`watch`); every forward pass goes through
:func:`attrib.core.forward.run_model`, which hooks those layers for the span of
that one model call only (:func:`capturing`). The scores then take the
recorded output (:func:`take`), which also drops the reference to it.

Nothing outlives a model call: hooks are removed in ``finally`` and act only
on the calling thread's passes (another thread may run the same model). The
hook keeps the layer's output and hands the model a copy of it, so an
in-place operation after the layer (``ReLU(inplace=True)``) cannot overwrite
what the score reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

_local = threading.local()


def _watched() -> tuple[nn.Module, ...]:
    return getattr(_local, "layers", ())


def _store() -> dict[int, list[Tensor]]:
    store: dict[int, list[Tensor]] | None = getattr(_local, "captured", None)
    if store is None:
        store = {}
        _local.captured = store
    return store


def watch(layers: Sequence[nn.Module]) -> None:
    """Watch ``layers`` in this thread's next forward passes (replacing what was watched; ``()`` for none)."""
    _local.layers = tuple(layers)
    _store().clear()


@contextmanager
def capturing(model: object) -> Iterator[None]:
    """Record the outputs of this thread's watched layers during one call of ``model``.

    Outputs of earlier passes that were never taken are dropped first, so at
    most one pass's activations are held.
    """
    layers = _watched()
    if not layers:
        yield
        return
    store = _store()
    store.clear()
    owner = threading.get_ident()
    handles = []

    def record(module: nn.Module, args: Any, output: Any) -> Tensor | None:
        if threading.get_ident() != owner:
            return None
        if not isinstance(output, Tensor):
            raise TypeError(
                f"a Neuron target needs a layer whose output is one Tensor, but {type(module).__name__} "
                f"returns {type(output).__name__}; pass a callable neuron on a layer with a Tensor output"
            )
        store.setdefault(id(module), []).append(output)
        return output.clone()

    try:
        for layer in layers:
            handles.append(layer.register_forward_hook(record))
        yield
    finally:
        for handle in handles:
            handle.remove()


def take(layer: nn.Module, label: str) -> Tensor:
    """The output ``layer`` gave in this thread's last forward pass (removed from the record).

    Raises:
        ValueError: the layer did not run in that pass, or ran more than once.
    """
    outputs = _store().pop(id(layer), [])
    if len(outputs) != 1:
        ran = "did not run" if not outputs else f"ran {len(outputs)} times"
        raise ValueError(
            f"{label}'s layer {ran} in the model's forward pass; a Neuron target needs a layer of the "
            "explained model that runs exactly once per pass"
        )
    return outputs[0]
