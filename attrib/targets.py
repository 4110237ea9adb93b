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
from torch import Tensor

from .core.forward import tensor_output

TargetLike = Union[
    None, int, Sequence[int], Sequence[Sequence[int]], Tensor, np.ndarray, Callable[[Tensor], Tensor], "Target"
]

_EXPECTED = (
    "expected None, an int class index, a sequence or 1-D integer tensor of length N, "
    "an (N, K) integer tensor, or a callable output -> (N,) scores"
)


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
    ) -> None:
        self.kind = kind  # "index", "predicted", "output", "callable" or "rows"
        self.n = n
        self.indices = indices
        self.fn = fn
        self._checked = checked

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
        return Target(self.kind, example.shape[0], fn=self.fn)

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
        if self.kind == "callable":
            assert self.fn is not None
            # The callable gets the raw output: a tuple, dict or dataclass-like output is fine here.
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
