"""Calling the model on a block of rows, with the checks every method needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from .batching import is_out_of_memory
from .probes import capturing

Model = Callable[..., Tensor]
"""An ``nn.Module`` (preferred: its state is guarded) or any callable returning a Tensor.

A model may also return a tuple, a dict or an object with fields (as
HuggingFace models do); explaining it then takes a callable ``target`` that
picks the scores from that output, e.g. ``target=lambda out: out.logits[:, 3]``.
"""


def first_parameter(model: object) -> Tensor | None:
    """The model's first parameter (or buffer), which tells its device and dtype; None if it has none."""
    if not isinstance(model, nn.Module):
        return None
    for param in model.parameters():
        return param
    for buffer in model.buffers():
        return buffer
    return None


def check_device(model: object, inputs: tuple[Tensor, ...]) -> None:
    """Raise a clear error if the inputs live on another device than the model's first parameter.

    ``nn.DataParallel`` scatters inputs from any device and is not checked.

    Raises:
        ValueError: the devices differ.
    """
    if isinstance(model, nn.DataParallel):
        return
    param = first_parameter(model)
    if param is None or not inputs:
        return
    device = inputs[0].device
    if param.device != device:
        raise ValueError(
            f"inputs are on {device} but the model's parameters are on {param.device}; "
            f"move them to one device (e.g. inputs.to({str(param.device)!r}) or model.to({str(device)!r}))"
        )


_DTYPE_WORDS = ("dtype", "scalar type", "half", "bfloat16", "float", "double")


def _explain_failure(model: object, inputs: tuple[Tensor, ...], error: RuntimeError) -> Exception | None:
    """A clearer error for a model that failed on a dtype mismatch with its parameters, else None."""
    param = first_parameter(model)
    if param is None or not param.is_floating_point() or torch.is_autocast_enabled() or is_out_of_memory(error):
        return None
    if not any(word in str(error).lower() for word in _DTYPE_WORDS):
        return None
    for i, x in enumerate(inputs):
        if x.dtype != param.dtype and not x.is_complex():
            label = "inputs" if len(inputs) == 1 else f"inputs[{i}]"
            return TypeError(
                f"the model failed on {label} of dtype {x.dtype}, while its parameters are {param.dtype} "
                f"({error}); cast the inputs to {param.dtype}, cast the model to {x.dtype}, "
                "or call the method under torch.autocast"
            )
    return None


def run_model(model: Model, inputs: tuple[Tensor, ...], args: tuple[Any, ...] = ()) -> Tensor:
    """``model(*inputs, *args)``, checked to return one tensor with a row per input row.

    A tensor output must have one row per input row. Any other output (a
    tuple, dict or dataclass-like object) is passed on unchanged, typed as a
    Tensor for the callers: only a callable target can turn it into scores,
    and :meth:`attrib.targets.Target.scores` says so for any other target.

    Raises:
        ValueError: the inputs and the model are on different devices, or the
            output's first dimension differs from the inputs' rows.
        TypeError: the model failed because the inputs' dtype differs from its parameters'.
    """
    check_device(model, inputs)
    try:
        with capturing(model):  # the inner layers a Neuron target reads, for this call only
            output = model(*inputs, *args)
    except RuntimeError as error:
        clearer = _explain_failure(model, inputs, error)
        if clearer is None:
            raise
        raise clearer from error
    if not isinstance(output, Tensor):
        return cast(Tensor, output)
    rows = inputs[0].shape[0]
    if output.dim() == 0 or output.shape[0] != rows:
        raise ValueError(
            f"the model's output must have one row per input row: {rows} rows went in, "
            f"output has shape {tuple(output.shape)}"
        )
    return output


def tensor_output(output: object) -> Tensor:
    """``output`` itself if it is a Tensor; else a TypeError saying to pass a callable target.

    Raises:
        TypeError: ``output`` is a tuple, dict or other object.
    """
    if isinstance(output, Tensor):
        return output
    fields = [name for name in ("logits", "last_hidden_state") if hasattr(output, name)]
    if fields:
        example = f"lambda out: out.{fields[0]}[:, 3]"
    elif isinstance(output, dict):
        example = f"lambda out: out[{next(iter(output), 'logits')!r}][:, 3]"
    elif isinstance(output, (tuple, list)):
        example = "lambda out: out[0][:, 3]"
    else:
        example = "lambda out: out.logits[:, 3]"
    raise TypeError(
        f"the model returned a {type(output).__name__}, not a Tensor; pass a callable target that picks "
        f"the scores to explain from it, e.g. target={example}"
    )
