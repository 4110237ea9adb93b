"""What is being explained: the ``target`` argument of every method.

Every method reduces the model output to one score per example (or ``K``
scores per example) and attributes that score. ``target`` may be:

* ``None``: the model's top-1 class per example, computed once on the clean
  inputs (for a model with a 1-D output ``(N,)`` the output itself).
* an ``int`` ``c``: class ``c`` for every example.
* a sequence or 1-D integer tensor of length ``N``: one class per example.
* an ``(N, K)`` integer tensor (or nested sequence): ``K`` classes per example.
  Results gain a ``K`` dimension after ``N``; ``result[:, k]`` equals the
  single-target result for ``target[:, k]``.
* a :class:`Neuron` ``(layer, index)``: one unit (or the sum of a slice of
  units, or a callable's score) of an inner layer's output, instead of a
  class; every method explains it (gradients, DeepLift, perturbations, ...).
* a callable ``output -> (R,)`` (or ``(R, K)``) score tensor: intermediate or
  multi-label scores, segmentation regions, custom rewards. It must act row by
  row, because methods call it on blocks of perturbed or interpolated copies.
  It receives the model's raw output, so it is also how to explain a model
  returning a tuple, a dict or a dataclass-like object (HuggingFace style):
  ``target=lambda out: out.logits[:, 3]``. Every other target needs a model
  returning a Tensor, and says so.

For an output with trailing dimensions ``(N, C, *rest)`` the score of class
``c`` is ``output[:, c]`` summed over ``rest`` (a one-hot backward seed spread
over every position, as in TorchRay).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from .core import probes
from .core.forward import tensor_output

TargetLike = Union[
    None,
    int,
    Sequence[int],
    Sequence[Sequence[int]],
    Tensor,
    np.ndarray,
    Callable[[Tensor], Tensor],
    "Neuron",
    "Target",
]

_EXPECTED = (
    "expected None, an int class index, a sequence or 1-D integer tensor of length N, "
    "an (N, K) integer tensor, a Neuron(layer, index), or a callable output -> (N,) scores"
)

NeuronIndex = int | slice | tuple[int | slice, ...] | Callable[[Tensor], Tensor]
"""Which unit of a layer's output ``(N, *shape)``: an index (tuple) over ``shape``, slices, or a callable."""


class Neuron:
    """A target that is one unit of an inner layer instead of a class: ``Neuron(layer, index)``.

    The score of example ``n`` is read off the output ``A`` ``(N, *shape)``
    that ``layer`` gives in the method's own forward pass:

    * ``index`` an int or a tuple of ints over ``shape``: :math:`A[n, i_1, ..., i_d]`
      (fewer indices than dimensions select a sub-tensor, which is summed);
    * a tuple holding slices (or one slice): the sum of the selected units, as Captum;
    * a callable ``A -> (N,)``: any score of the layer's output (e.g. a channel's mean).

    Every method takes it as its ``target`` (gradients, IntegratedGradients,
    DeepLift, Occlusion, Shapley sampling, ...), which replaces Captum's
    separate ``Neuron*`` classes: ``Saliency(model).attribute(x,
    target=Neuron(model.layer3, (5, 2, 2)))`` is Captum's ``NeuronGradient``.
    The layer must be a module of the explained model that runs exactly once
    per forward pass and returns one Tensor. The layer is watched only while
    the method's forward passes run, by a hook removed after each pass.

    Example:
        >>> maps = attrib.IntegratedGradients(model).attribute(images, target=attrib.Neuron(model.fc1, 7))
        >>> channel = attrib.Neuron(model.layer4, lambda a: a[:, 12].mean((1, 2)))
    """

    def __init__(self, layer: nn.Module, index: NeuronIndex) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"Neuron's layer must be an nn.Module of the explained model (e.g. model.layer3), "
                f"got {type(layer).__name__}"
            )
        if not callable(index):
            parts = index if isinstance(index, tuple) else (index,)
            if not parts or not all(isinstance(i, slice) or _is_index(i) for i in parts):
                raise TypeError(
                    "Neuron's index must be an int, a slice, a non-empty tuple of ints and slices over the layer's "
                    f"non-batch dimensions, or a callable layer_output -> (N,) scores; got {index!r}"
                )
        self.layer = layer
        self.index = index

    def __repr__(self) -> str:
        index = getattr(self.index, "__name__", "callable") if callable(self.index) else repr(self.index)
        return f"Neuron({type(self.layer).__name__}, {index})"

    def scores(self, activation: Tensor) -> Tensor:
        """The ``(R,)`` scores of a layer output block ``(R, *shape)``."""
        if callable(self.index):
            return self.index(activation)
        parts = self.index if isinstance(self.index, tuple) else (self.index,)
        if len(parts) > activation.dim() - 1:
            raise ValueError(
                f"Neuron index {self.index!r} has {len(parts)} entries, but the layer's output "
                f"{tuple(activation.shape)} has only {activation.dim() - 1} non-batch dimensions"
            )
        try:
            selected = activation[(slice(None),) + tuple(parts)]
        except IndexError as err:
            raise ValueError(
                f"Neuron index {self.index!r} is out of range for the layer's output {tuple(activation.shape)} ({err})"
            ) from None
        return selected if selected.dim() == 1 else selected.flatten(1).sum(1)

    def _from_pass(self, output: Any) -> Tensor:
        """The scores of the forward pass that produced ``output`` (the layer's recorded output)."""
        return self.scores(probes.take(self.layer, repr(self)))


def _is_index(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def class_scores(output: Tensor) -> Tensor:
    """The ``(R, C)`` per-class scores of an output ``(R, C, *rest)``, summed over ``rest``.

    Raises:
        TypeError: the output is not a Tensor (a tuple, dict, ...): pass a callable target.
        ValueError: the output has no class dimension.
    """
    output = tensor_output(output)
    if output.dim() < 2:
        raise ValueError(
            f"an integer target needs an output with a class dimension (N, C, ...), got shape {tuple(output.shape)}; "
            "use target=None to explain a 1-D output, or a callable target"
        )
    return output if output.dim() == 2 else output.flatten(2).sum(-1)


class Target:
    """A resolved ``target`` for one call: turns model outputs into scores.

    Build it with :func:`resolve_target`; methods call :meth:`scores` on each
    block of outputs they evaluate, passing for each output row the number of
    the example it belongs to.
    """

    def __init__(
        self,
        kind: str,
        n: int,
        indices: Tensor | None = None,
        fn: Callable[..., Tensor] | None = None,
        checked: bool = False,
        watched: tuple[nn.Module, ...] = (),
    ) -> None:
        self.kind = kind  # "index", "predicted", "output", "callable", "neuron" or "rows"
        self.n = n
        self.indices = indices
        self.fn = fn
        self._checked = checked
        self.watched = watched  # inner layers whose outputs the scores read (a Neuron's)

    @classmethod
    def of_rows(cls, fn: Callable[[Any, Tensor], Tensor], n: int) -> Target:
        """A callable target for ``n`` examples that also sees which example each output row belongs to.

        ``fn(output, example)`` gets an output block ``(R, ...)`` and the ``(R,)``
        example numbers (in ``0 .. n-1``) of its rows, and returns ``(R,)`` or
        ``(R, K)`` scores. This is how per-example data (labels, masks) follow
        the rows that methods mix across examples.

        Example:
            >>> labels = torch.tensor([3, 7])
            >>> t = Target.of_rows(lambda out, ex: out.gather(1, labels[ex, None]).squeeze(1), 2)
        """
        return cls("rows", n, fn=fn)

    def select(self, example: Tensor) -> Target:
        """The target of the rows whose example numbers are ``example``."""
        if self.kind == "rows":
            fn = self.fn
            assert fn is not None

            def selected(output: Any, rows: Tensor) -> Tensor:
                return fn(output, example.index_select(0, rows.to(example.device)))

            return Target("rows", example.shape[0], fn=selected)
        if self.kind == "index":
            assert self.indices is not None
            idx = self.indices.index_select(0, example.to(self.indices.device))
            return Target("index", idx.shape[0], idx, checked=self._checked)
        if self.kind == "predicted":
            raise RuntimeError("resolve the top-1 prediction on the clean inputs before selecting rows")
        return Target(self.kind, example.shape[0], fn=self.fn, watched=self.watched)

    def with_prediction(self, clean_output: Callable[[], Tensor]) -> Target:
        """Replace a top-1 target by the classes predicted on the clean inputs.

        ``clean_output`` is called (once) only when needed; it returns the
        model output, or the per-class scores, of the clean ``N`` examples.
        """
        if self.kind != "predicted":
            return self
        output = clean_output().detach()
        if output.dim() == 1:
            return Target("output", self.n)
        return Target("index", self.n, class_scores(output).argmax(1), checked=True)

    def scores(self, output: Tensor, example: Tensor) -> Tensor:
        """Scores ``(R,)`` or ``(R, K)`` of an output block ``(R, ...)``.

        Args:
            output: the model output for ``R`` rows.
            example: ``(R,)`` integer tensor, the example each row belongs to.
        """
        if self.kind in ("callable", "neuron"):
            assert self.fn is not None
            # The callable gets the raw output: a tuple, dict or dataclass-like output is fine here.
            # A neuron's reads its layer's output recorded during the pass that produced ``output``.
            return _checked_callable_scores(self.fn(output), example.shape[0])
        if self.kind == "rows":
            assert self.fn is not None
            return _checked_callable_scores(self.fn(output, example), example.shape[0])
        output = tensor_output(output)
        if self.kind == "output":
            if output.dim() != 1:
                raise ValueError(f"target=None resolved to a 1-D output, got output shape {tuple(output.shape)}")
            return output
        if self.kind == "predicted":
            if output.dim() == 1:
                return output
            scores = class_scores(output)
            return scores.gather(1, scores.detach().argmax(1, keepdim=True)).squeeze(1)
        assert self.indices is not None
        scores = class_scores(output)
        if not self._checked:
            self._check_range(scores.shape[1])
        idx = self.indices.index_select(0, example.to(self.indices.device)).to(scores.device)
        if idx.dim() == 1:
            return scores.gather(1, idx.unsqueeze(1)).squeeze(1)
        return scores.gather(1, idx)

    def _check_range(self, num_classes: int) -> None:
        assert self.indices is not None
        # One host round-trip per call, on the first block only.
        if bool(((self.indices < 0) | (self.indices >= num_classes)).any()):
            lo, hi = int(self.indices.min()), int(self.indices.max())
            raise ValueError(
                f"target class indices must lie in [0, {num_classes}) for a model with {num_classes} classes, "
                f"got values in [{lo}, {hi}]"
            )
        self._checked = True


def _checked_callable_scores(scores: object, rows: int) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"a callable target must return a Tensor of shape (N,) or (N, K), got {type(scores).__name__}")
    if scores.dim() not in (1, 2) or scores.shape[0] != rows:
        raise ValueError(
            f"a callable target must return one score per output row, shape ({rows},) or ({rows}, K); "
            f"got shape {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"a callable target must return floating-point scores, got dtype {scores.dtype}")
    return scores


def resolve_target(target: TargetLike, n: int, device: torch.device | None = None) -> Target:
    """Validate ``target`` for a batch of ``n`` examples (see the module docstring).

    Raises:
        ValueError: a float, negative, wrong-length or wrongly shaped target.
        TypeError: a target of an unsupported type.
    """
    if isinstance(target, Neuron):
        target = Target("neuron", n, fn=target._from_pass, watched=(target.layer,))
    # Each call names the layers its forward passes must watch (none unless the target is a Neuron).
    probes.watch(target.watched if isinstance(target, Target) else ())
    if isinstance(target, Target):
        if target.n != n:
            raise ValueError(f"target was resolved for {target.n} examples, but inputs hold N={n}")
        return target
    if target is None:
        return Target("predicted", n)
    if callable(target) and not isinstance(target, (Tensor, np.ndarray)):
        return Target("callable", n, fn=target)
    if isinstance(target, bool) or isinstance(target, np.bool_):
        raise ValueError(f"target must be an integer class index, got bool; {_EXPECTED}")
    if isinstance(target, numbers.Integral):
        if target < 0:
            raise ValueError(f"target class index must be >= 0, got {target}")
        return Target("index", n, torch.full((n,), int(target), dtype=torch.long, device=device))
    if isinstance(target, numbers.Real):
        raise ValueError(f"target must be an integer class index, got float {target!r}; {_EXPECTED}")
    if isinstance(target, (Tensor, np.ndarray, Sequence)) and not isinstance(target, (str, bytes)):
        try:
            indices = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"could not read target as integer class indices ({err}); {_EXPECTED}") from None
        return _index_target(indices.to(device) if device is not None else indices, n)
    raise TypeError(f"target has unsupported type {type(target).__name__}; {_EXPECTED}")


def _index_target(indices: Tensor, n: int) -> Target:
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"target must hold integer class indices, got dtype {indices.dtype}; {_EXPECTED}")
    indices = indices.long()
    if indices.dim() == 0:
        indices = indices.expand(n).clone()
    elif indices.dim() == 1:
        if indices.shape[0] != n:
            raise ValueError(
                f"a 1-D target must have one class per example (length N={n}), got length {indices.shape[0]}"
            )
    elif indices.dim() == 2:
        if indices.shape[0] != n or indices.shape[1] == 0:
            raise ValueError(f"a 2-D target must have shape (N, K) with N={n} and K >= 1, got {tuple(indices.shape)}")
    else:
        raise ValueError(f"target must be 0-, 1- or 2-D, got shape {tuple(indices.shape)}; {_EXPECTED}")
    if indices.numel() and bool((indices < 0).any()):
        raise ValueError(f"target class indices must be >= 0, got minimum {int(indices.min())}")
    return Target("index", n, indices)
